"""The extra query rotation: a pure RoPE rotation by an integer angle multiple.

``rotate(x, theta)`` returns ``R(theta) x``: each rotary pair ``(a, b)`` of ``x`` turns by
``theta * inv_freq``. No attention scaling factor (YaRN's mscale is already in the stored
keys and queries). Neox style pairs dimension ``i`` with ``i + rotary_dim/2``; GPT-J style
pairs ``2i`` with ``2i + 1``. Dimensions past ``rotary_dim`` are left alone.
"""

from __future__ import annotations

import functools

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


@functools.cache
def partners(head_dim: int, half: int, is_neox: bool) -> torch.Tensor:
    """Rotation partner of every dimension (itself beyond the rotary part): ``perm`` of
    ``turn_table``. One tensor per shape, built once (every step's work list and copies
    take it); never written to."""
    idx = torch.arange(head_dim)
    if is_neox:
        idx[:half], idx[half:2 * half] = torch.arange(half, 2 * half), torch.arange(half)
    else:
        idx[: 2 * half] = torch.arange(2 * half).view(half, 2).flip(-1).flatten()
    return idx


def turn_table(theta: torch.Tensor, inv_freq: torch.Tensor, head_dim: int, is_neox: bool,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin [n, head_dim]`` such that ``R(theta) x = x * cos + x[..., perm] * sin``
    (``perm = partners(...)``, the rotation's sign folded into ``sin``); angles in float64."""
    half = inv_freq.numel()
    angle = theta.double()[:, None] * inv_freq.double()[None, :]
    c, s = angle.cos().to(dtype), angle.sin().to(dtype)
    cos = torch.ones(theta.numel(), head_dim, dtype=dtype)
    sin = torch.zeros(theta.numel(), head_dim, dtype=dtype)
    if is_neox:
        cos[:, :half], cos[:, half:2 * half] = c, c
        sin[:, :half], sin[:, half:2 * half] = -s, s
    else:
        cos[:, : 2 * half] = c.repeat_interleave(2, dim=1)
        sin[:, : 2 * half] = torch.stack([-s, s], dim=-1).flatten(1)
    return cos, sin
