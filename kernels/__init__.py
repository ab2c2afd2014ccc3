"""Fragment attention: a paged-KV attention op whose queries are rotated per fragment.

Installed as ``hogwild_kernels`` (the folder is ``kernels/``). One op, three
implementations, each ``fragment_attention`` in its module: ``reference`` (plain PyTorch,
the definition the others are tested against), ``cpu_op`` (the plugin's CPU path, prepared
once per step) and ``triton_op`` (the plugin's GPU kernel). ``table`` builds the fragment
table all three read from each sequence's ``SeqView`` (``seq_view``); ``rotary`` is the
rotation they share. Importing the package imports no torch: ``SeqView`` and ``isa`` are pure,
and ``FragmentTable`` and ``build`` load ``table`` when first asked for.
"""

from .seq_view import SeqView

__all__ = ["FragmentTable", "SeqView", "build"]


def __getattr__(name: str):
    if name in ("FragmentTable", "build"):
        from . import table

        return getattr(table, name)
    raise AttributeError(f"module 'hogwild_kernels' has no attribute {name!r}")
