"""A split's inputs as a modality's ``read`` gives them: in memory, or read on demand.

``Inputs`` is a sequence of model inputs in the order of its labels. ``ArrayInputs`` holds an
array (digits, ``.npz`` files, text's token ids). ``StreamedInputs`` holds only a listing (file
paths, rows of a memory-mapped array, records of tar shards) and a picklable ``reader`` that
turns one entry into the item as it travels (an image: uint8 (C, H, W)); batches are read in
DataLoader worker processes (``workers``) and made model inputs (scaled, normalised) by
``finish`` where the model runs. Memory stays independent of the data set's size: nothing holds
more than the listing, the labels and the batches in flight.

A reader may take a training view (``view``: the geometry a random augmentation draws per item,
seeded by the item's place in the epoch, so a resumed run reads the same views).

numpy only at import time; torch is imported where batches are made.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from kdexport.errors import KdxError


def started(loader):
    """``iter(loader)`` without the SIGCHLD handler PyTorch installs for DataLoader workers and
    leaves for the life of the process: with OpenVINO loaded, the exit of any later child process
    (``subprocess.run``) then crashed the process with a segmentation fault (measured here: the
    test suite runs commands in-process). The handler that was there stays; PyTorch finds a dead
    worker by its status check instead, within seconds."""
    if not loader.num_workers or threading.current_thread() is not threading.main_thread():
        return iter(loader)
    previous = signal.getsignal(signal.SIGCHLD)
    batches = iter(loader)
    signal.signal(signal.SIGCHLD, previous if previous is not None else signal.SIG_DFL)
    return batches


def default_workers() -> int:
    """The DataLoader workers when the recipe leaves ``data.workers`` at -1: the CPUs this
    process may use, less one for the training loop (none on a single CPU)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, (cpus or 1) - 1)


class Inputs:
    """The contract of a split's inputs."""

    workers = 0

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def item_shape(self) -> tuple[int, ...]:
        """One model input's shape (an image: (C, H, W))."""
        raise NotImplementedError

    def take(self, idx) -> np.ndarray:
        """The model inputs of rows ``idx``, read and finished here (float32 for images)."""
        raise NotImplementedError

    def head(self, n: int) -> np.ndarray:
        return self.take(np.arange(min(n, len(self))))

    def subset(self, idx) -> Inputs:
        """Rows ``idx`` (indices or a boolean mask), still unread."""
        raise NotImplementedError

    def identity(self) -> str:
        """A hash that changes when the inputs do (fingerprints and the teacher cache)."""
        raise NotImplementedError

    def batches(self, order: Sequence[np.ndarray], view=None, seed: int = 0, pin: bool = False):
        """``(rows, batch)`` for each index array of ``order``: the rows read (all of them) and
        their items as they travel (a torch tensor; ``finish`` makes them model inputs). A
        streamed batch lives in a buffer its worker reuses: it holds until the next batch is
        asked for (finish it, or copy it, before)."""
        raise NotImplementedError

    def finish(self, batch):
        """A batch of travelling items (a torch tensor, on the model's device) as model inputs."""
        return batch


@dataclass
class ArrayInputs(Inputs):
    """Inputs held in one array (in memory, already model inputs)."""

    array: np.ndarray

    def __len__(self) -> int:
        return len(self.array)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])

    def take(self, idx) -> np.ndarray:
        return self.array[idx]

    def head(self, n: int) -> np.ndarray:
        return self.array[:n]

    def subset(self, idx) -> ArrayInputs:
        return ArrayInputs(self.array[idx])

    def identity(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.array).tobytes()).hexdigest()[:20]

    def batches(self, order, view=None, seed: int = 0, pin: bool = False):
        import torch

        for rows in order:
            yield rows, torch.from_numpy(np.ascontiguousarray(self.array[rows]))


@dataclass
class Finish:
    """Travelling items (uint8 pixels) to model inputs: ``x * scale``, then per channel
    ``(x - mean) / std``; applied on the model's device."""

    scale: float = 1.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def _stats(self, ndim: int):
        shape = (1, -1) + (1,) * (ndim - 2)
        mean = np.asarray(self.mean or [0.0], np.float32).reshape(shape)
        std = np.asarray(self.std or [1.0], np.float32).reshape(shape)
        return mean, std

    def numpy(self, x: np.ndarray) -> np.ndarray:
        mean, std = self._stats(x.ndim)
        return ((x.astype(np.float32) * np.float32(self.scale)) - mean) / std

    def torch(self, x):
        import torch

        mean, std = (torch.from_numpy(a).to(x.device) for a in self._stats(x.ndim))
        return (x.float() * self.scale - mean) / std


@dataclass
class StreamedInputs(Inputs):
    """Inputs read on demand: ``entries`` (a numpy array: paths, row numbers, shard records)
    and ``reader(entry, view, rng)`` giving one travelling item (a numpy array) or raising
    ``KdxError`` naming the entry. ``source`` names what the entries are of (the identity)."""

    entries: np.ndarray
    reader: Callable
    shape: tuple[int, ...]
    finisher: Finish = field(default_factory=Finish)
    source: str = ""
    workers: int = 0
    stamp: str = ""  # what else identifies the entries' contents (sizes and times of files)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return self.shape

    def _item(self, i: int, view=None, rng=None) -> np.ndarray:
        x = self.reader(self.entries[i], view, rng)
        if x.shape != self.shape:
            raise KdxError(
                f"{self.entries[i]}: read as {x.shape}, the others as {self.shape}; set "
                "data.image_size = [H, W] to resize every image to one size"
            )
        return x

    def take(self, idx) -> np.ndarray:
        rows = np.arange(len(self))[idx]
        if len(rows) == 0:
            return np.empty((0, *self.shape), np.float32)
        return self.finisher.numpy(np.stack([self._item(int(i)) for i in rows]))

    def subset(self, idx) -> StreamedInputs:
        return replace(self, entries=self.entries[idx])

    def identity(self) -> str:
        h = hashlib.sha256(f"{self.source}|{self.stamp}|{self.shape}|{self.finisher}".encode())
        h.update("\n".join(map(str, self.entries)).encode())
        return h.hexdigest()[:20]

    def batches(self, order, view=None, seed: int = 0, pin: bool = False):
        """Read in ``workers`` processes (none: here). The item at place p of the epoch draws
        its view from (seed, p), whichever worker reads it."""
        from torch.utils.data import DataLoader

        order = [np.asarray(rows) for rows in order]
        starts = np.cumsum([0] + [len(r) for r in order])
        data = _Items(self, np.concatenate(order) if order else np.empty(0, int), view, seed)
        batches = [np.arange(starts[i], starts[i + 1]) for i in range(len(order))]
        loader = DataLoader(
            data,
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=pin,
            prefetch_factor=PREFETCH if self.workers else None,
        )
        for rows, (batch, errors) in zip(order, started(loader), strict=True):
            if errors:
                raise KdxError(errors[0])
            yield rows, batch

    def finish(self, batch):
        return self.finisher.torch(batch)


class _Items:
    """The items of an epoch's order, by place: what a DataLoader worker reads."""

    def __init__(self, inputs: StreamedInputs, rows: np.ndarray, view, seed: int):
        self.inputs, self.rows, self.view, self.seed = inputs, rows, view, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, place: int):
        rng = np.random.default_rng((self.seed, place)) if self.view is not None else None
        try:
            return self.inputs._item(int(self.rows[place]), self.view, rng), None
        except KdxError as e:  # said in the main process, in one line
            return None, str(e)


PREFETCH = 2  # batches in flight per worker (DataLoader's prefetch_factor)
_RING: dict = {}  # per worker process: its reused shared-memory batches, by shape and dtype


def _collate(items: list) -> tuple:
    """The batch of the items. In a worker, stacked into one of ``PREFETCH + 1`` shared-memory
    buffers it reuses in turn: a fresh buffer per batch cost a page fault per 4 KiB here (a
    third of a worker's time at 224 px). A worker has at most ``PREFETCH`` batches handed out
    and not yet taken by the loop, and the loop is done with a batch when it asks for the next,
    so the buffer a worker fills was last used ``PREFETCH + 1`` batches ago, by then finished
    with (``batches``' callers finish a batch before asking for the next)."""
    import torch
    from torch.utils.data import get_worker_info

    errors = [e for _, e in items if e is not None]
    if errors:
        return None, errors
    arrays = [x for x, _ in items]
    if get_worker_info() is None:
        return torch.from_numpy(np.stack(arrays)), []
    key = (len(arrays), arrays[0].shape, arrays[0].dtype.str)
    ring = _RING.setdefault(key, {"at": 0, "buffers": []})
    if len(ring["buffers"]) <= PREFETCH:
        shape = (len(arrays), *arrays[0].shape)
        buffer = torch.from_numpy(np.empty(shape, arrays[0].dtype)).share_memory_()
        ring["buffers"].append(buffer)
    batch = ring["buffers"][ring["at"] % (PREFETCH + 1)]
    ring["at"] += 1
    np.stack(arrays, out=batch.numpy())
    return batch, []


def concat(a: Inputs, b: Inputs, what: str) -> Inputs:
    """``a`` then ``b`` (a split and the transfer set), of one form; files joining inputs held in
    memory are read into memory with them."""
    if not len(b):
        return a
    if isinstance(a, ArrayInputs):
        return ArrayInputs(np.concatenate([a.array, b.take(np.arange(len(b)))]))
    if (
        isinstance(a, StreamedInputs)
        and isinstance(b, StreamedInputs)
        and (a.reader, a.shape, a.finisher) == (b.reader, b.shape, b.finisher)
    ):
        stamp = f"{a.stamp}+{b.source}:{b.stamp}"
        return replace(a, entries=np.concatenate([a.entries, b.entries]), stamp=stamp)
    raise KdxError(
        f"{what}: an array transfer set cannot join a source read from files; give the transfer "
        "set as files too (an image folder or a manifest)"
    )


EVAL_BATCH = 512  # inputs per batch when evaluating, at most
EVAL_BATCH_BYTES = 64 << 20  # and at most this many bytes of float32 model inputs


def in_order(inputs: Inputs) -> list[np.ndarray]:
    """Every row of ``inputs`` in order, in batches for evaluation: ``EVAL_BATCH`` rows, fewer
    for large inputs (a 224 px photo: 111), so that the memory a batch takes does not depend on
    the image size (nor, with the workers' prefetching, on the data set's)."""
    size = 4 * int(np.prod(inputs.item_shape))
    batch = max(1, min(EVAL_BATCH, EVAL_BATCH_BYTES // max(size, 1)))
    n = len(inputs)
    return [np.arange(i, min(i + batch, n)) for i in range(0, n, batch)]


def read_all(inputs: Inputs) -> Iterator[np.ndarray]:
    """Every input in order, finished, a batch at a time (read in the inputs' workers)."""
    for _, batch in inputs.batches(in_order(inputs)):
        yield inputs.finish(batch).numpy()


def file_stamp(files: list) -> str:
    """A hash of the files' sizes and modification times: changed files, another identity."""
    h = hashlib.sha256()
    for f in files:
        stat = os.stat(f)
        h.update(f"{stat.st_size}:{stat.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def readable(files: list, reader, workers: int) -> np.ndarray:
    """A mask of the entries ``reader`` can read (it raises ``KdxError`` on the others): one
    pass, in ``workers`` processes (``skip_unreadable``)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(_Probe(files, reader), batch_size=64, num_workers=workers, collate_fn=list)
    return np.array([ok for batch in started(loader) for ok in batch], bool)


class _Probe:
    def __init__(self, files, reader):
        self.files, self.reader = files, reader

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> bool:
        try:
            self.reader(self.files[i], None, None)
            return True
        except KdxError:
            return False
