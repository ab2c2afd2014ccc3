"""Fragment attention: a paged-KV attention op whose queries are rotated per fragment.

Installed as ``hogwild_kernels`` (the folder is ``kernels/``). ``reference`` is the plain
PyTorch op; ``cpu_op`` the CPU path (same op, prepared once per step); ``triton_op`` the
Triton kernel for GPUs.
"""

from .reference import fragment_attention
from .table import FragmentTable, SeqView, build

__all__ = ["FragmentTable", "SeqView", "build", "fragment_attention"]
