"""A fix to the Triton interpreter (tests only): ``tl.dot`` of bfloat16 operands.

The interpreter keeps bfloat16 tensors as their raw 16 bits in numpy ``uint16`` arrays (numpy
has no bfloat16) and ``InterpreterBuilder.create_dot`` multiplies those integers (Triton 3.9:
errors of 1e9 on unit inputs). It widens 8-bit floats before its matmul; this widens bfloat16
the same way, exactly (a bfloat16 is the top half of a float32), so the kernels' bfloat16
path runs in the interpreter as it does on a GPU: operands in bfloat16, sums in float32.
"""

from __future__ import annotations


def fix_bfloat16_dot() -> None:
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "_widens_bfloat16", False):
        return
    original = builder.create_dot

    def widened(x):
        if x.dtype.scalar != tl.bfloat16:
            return x
        data = interpreter._convert_float(x.data, tl.bfloat16, tl.float32, None).view(np.float32)
        return interpreter.TensorHandle(data, tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widened(a), widened(b), d, input_precision, max_num_imprecise_acc)

    create_dot._widens_bfloat16 = True
    builder.create_dot = create_dot
