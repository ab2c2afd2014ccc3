"""vllm-hogwild: Hogwild! Inference (W workers over one shared KV cache) as a vLLM plugin.

Pure logic: ``params`` (the request flag), ``layouts``, ``steps``, ``group``, ``planner``,
``admission``. vLLM glue: ``vllm_glue`` (hooks), ``backend`` (attention), ``runtime``.
"""

__version__ = "0.1.0"
