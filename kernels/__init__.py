"""Fragment attention: a paged-KV attention op whose queries are rotated per fragment.

Installed as ``hogwild_kernels`` (the folder is ``kernels/``). One op, three
implementations, each ``fragment_attention`` in its module: ``reference`` (plain PyTorch,
the definition the others are tested against), ``cpu_op`` (the plugin's CPU path, prepared
once per step) and ``triton_op`` (the plugin's GPU kernel). ``table`` builds the fragment
table all three read; ``rotary`` is the rotation they share.
"""

from .table import FragmentTable, SeqView, build

__all__ = ["FragmentTable", "SeqView", "build"]
