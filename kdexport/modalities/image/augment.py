"""Image augmentation on batches (N, C, H, W), seeded by the training loop's generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The ``shift`` augmentation: each sample moved by up to max(1, min(H, W) // 8) pixels,
    zero-filled."""
    n, _, h, w = x.shape
    m = max(1, min(h, w) // 8)
    dy, dx = (torch.randint(0, 2 * m + 1, (2, n), generator=gen)).to(x.device)
    rows = torch.arange(h, device=x.device)[None] + dy[:, None]
    cols = torch.arange(w, device=x.device)[None] + dx[:, None]
    i = torch.arange(n, device=x.device)[:, None, None]
    out = F.pad(x, (m, m, m, m)).permute(0, 2, 3, 1)[i, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
