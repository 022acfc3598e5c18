"""The teacher's outputs over a transfer set that does not change (no random augmentation).

The teacher runs once over the set; its logits (and the feature layer a feature loss reads)
are kept in ``RUN/cache/teacher-KEY.logits.npy`` (``.feature.npy``), opened memory-mapped, so
a transfer set of millions of inputs costs disk, not RAM; they are reused every epoch and by
every later run, the baselines and the search included. KEY hashes the teacher's weights, the
inputs' identity, the preprocessing and the layer, so a changed teacher or input can never be
served stale outputs. With random augmentation there is no cache: the teacher runs on every
augmented batch (function matching); nor with a text feature loss (``tinybert_hidden``,
``minilm_attention``), whose inputs, every layer's hidden states or attentions of every
example, would be far too large to keep.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdexport.losses import LayerTap
from kdexport.modalities.inputs import Inputs, in_order
from kdexport.zoo import eval_mode


def cache_key(teacher_sha256: str, inputs_identity: str, preprocessing: dict, layer: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([teacher_sha256, preprocessing, layer], sort_keys=True).encode())
    h.update(inputs_identity.encode())
    return h.hexdigest()[:20]


class _Writer:
    """One output written a batch at a time into a memory-mapped ``.npy`` under a temporary
    name, renamed into place when complete."""

    def __init__(self, path: Path, n: int):
        self.path, self.n, self.at, self.array, self.tmp = path, n, 0, None, None

    def add(self, batch: np.ndarray) -> None:
        if self.array is None:
            fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            os.close(fd)
            shape = (self.n, *batch.shape[1:])
            self.array = np.lib.format.open_memmap(self.tmp, "w+", np.float32, shape)
        self.array[self.at : self.at + len(batch)] = batch
        self.at += len(batch)

    def close(self) -> None:
        self.array.flush()
        del self.array
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self.tmp:
            Path(self.tmp).unlink(missing_ok=True)


@torch.no_grad()
def _run(teacher: nn.Module, x: Inputs, tap: LayerTap | None, device: torch.device, paths):
    eval_mode(teacher)
    writers = [_Writer(p, len(x)) for p in paths[: 2 if tap else 1]]
    try:
        for _, batch in x.batches(in_order(x)):
            writers[0].add(teacher(x.finish(batch.to(device))).float().cpu().numpy())
            if tap:
                writers[1].add(tap.value.float().cpu().numpy())
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.discard()
        raise


def _load(path: Path, n: int) -> np.ndarray | None:
    """A cached output, memory-mapped (copy on write: torch may wrap it), or None when the file
    is missing, damaged or does not fit."""
    try:
        a = np.load(path, mmap_mode="c")
    except (OSError, ValueError):
        return None
    return a if len(a) == n else None


def teacher_outputs(
    teacher: nn.Module,
    x: Inputs,
    key: str,
    cache_dir: Path,
    tap: LayerTap | None,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The teacher's logits (and tapped feature) for ``x``, from the cache or computed once."""
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    paths = [Path(cache_dir) / f"teacher-{key}.{part}.npy" for part in ("logits", "feature")]
    need = paths[: 2 if tap else 1]
    if any(_load(p, len(x)) is None for p in need):
        _run(teacher, x, tap, device, paths)
    logits = _load(paths[0], len(x))
    return logits, _load(paths[1], len(x)) if tap else None
