"""Entry point of the ``vllm.general_plugins`` group, name ``hogwild``.

vLLM calls ``register`` in every process it starts (``VLLM_PLUGINS=hogwild`` selects it).
"""


def register() -> None:
    from vllm_hogwild.hooks import install

    install()
