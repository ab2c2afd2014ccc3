"""The GPU path of the fragment op, in Triton, by role: ``inner`` (the math of one tile),
``kernel`` (the programs), ``plan`` (the launch plan, host side), ``launch`` (the op)."""
