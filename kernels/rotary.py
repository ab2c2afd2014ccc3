"""The extra query rotation: a pure RoPE rotation by an integer angle multiple.

``rotate(x, theta)`` returns ``R(theta) x``: each rotary pair ``(a, b)`` of ``x`` turns by
``theta * inv_freq``. No attention scaling factor (YaRN's mscale is already in the stored
keys and queries). Neox style pairs dimension ``i`` with ``i + rotary_dim/2``; GPT-J style
pairs ``2i`` with ``2i + 1``. Dimensions past ``rotary_dim`` are left alone.
"""

from __future__ import annotations

import torch


def pair_index(rotary_dim: int, is_neox: bool, device: torch.device | None = None):
    """Indices of the first and second member of each rotary pair."""
    half = torch.arange(rotary_dim // 2, device=device)
    return (half, half + rotary_dim // 2) if is_neox else (2 * half, 2 * half + 1)


def rotate(x: torch.Tensor, theta: torch.Tensor, inv_freq: torch.Tensor, is_neox: bool) -> torch.Tensor:
    """``R(theta) x`` for ``x: [..., D]`` and integer ``theta`` broadcastable to ``x[..., 0]``.

    Angles are formed in float64 so that long contexts keep their precision.
    """
    rotary_dim = 2 * inv_freq.numel()
    a, b = pair_index(rotary_dim, is_neox, x.device)
    angle = theta.to(torch.float64)[..., None] * inv_freq.to(x.device, torch.float64)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    xa, xb = x[..., a], x[..., b]
    out = x.clone()
    out[..., a] = xa * cos - xb * sin
    out[..., b] = xb * cos + xa * sin
    return out
