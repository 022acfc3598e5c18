"""The teacher's outputs over a transfer set that does not change (no random augmentation).

The teacher runs once over the set; its logits (and the feature layer a feature loss reads)
are kept in ``RUN/cache/teacher-KEY.npz`` and reused every epoch and by every later run, the
baselines and the search included. KEY hashes the teacher's weights, the inputs, the
preprocessing and the layer, so a changed teacher or input can never be served stale outputs.
With random augmentation there is no cache: the teacher runs on every augmented batch; nor
with a text feature loss (``tinybert_hidden``, ``minilm_attention``), whose inputs, every
layer's hidden states or attentions of every example, would be far too large to keep.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdexport.artifact import atomic_file
from kdexport.losses import LayerTap
from kdexport.zoo import eval_mode


def cache_key(teacher_sha256: str, x: np.ndarray, preprocessing: dict, layer: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([teacher_sha256, preprocessing, layer], sort_keys=True).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()[:20]


@torch.no_grad()
def _run(teacher: nn.Module, x: np.ndarray, tap: LayerTap | None, device: torch.device):
    eval_mode(teacher)
    logits, features = [], []
    for i in range(0, len(x), 512):
        logits.append(teacher(torch.from_numpy(x[i : i + 512]).to(device)).float().cpu())
        if tap:
            features.append(tap.value.float().cpu())
    feature = torch.cat(features).numpy() if tap else None
    return torch.cat(logits).numpy(), feature


def _save(path: Path, logits: np.ndarray, feature: np.ndarray | None) -> None:
    with atomic_file(path) as f:
        np.savez(f, logits=logits, **({"feature": feature} if feature is not None else {}))


def _load(path: Path, n: int, tap: LayerTap | None):
    """The cached outputs, or None when the file is missing, damaged or does not fit."""
    try:
        with np.load(path, allow_pickle=False) as f:
            logits = f["logits"]
            feature = f["feature"] if tap else None
    except (OSError, KeyError, ValueError):
        return None
    return (logits, feature) if len(logits) == n else None


def teacher_outputs(
    teacher: nn.Module,
    x: np.ndarray,
    key: str,
    cache_dir: Path,
    tap: LayerTap | None,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The teacher's logits (and tapped feature) for ``x``, from the cache or computed once."""
    path = Path(cache_dir) / f"teacher-{key}.npz"
    cached = _load(path, len(x), tap) if path.is_file() else None
    if cached is not None:
        return cached
    logits, feature = _run(teacher, x, tap, device)
    _save(path, logits, feature)
    return logits, feature
