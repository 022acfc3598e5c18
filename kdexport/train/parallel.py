"""Where training runs: the device, mixed precision, and torch.distributed under ``torchrun``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each process joins one process group (nccl on CUDA,
gloo on the CPU), trains a shard of every batch, and DistributedDataParallel averages the
student's gradients; the teacher only runs forward and is never wrapped. Process 0 alone
writes checkpoints and artifacts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from kdexport.artifact import Artifact
from kdexport.errors import KdxError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Cluster:
    """This process's place: rank of world, and the device it trains on."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as it trains here: DistributedDataParallel when there are several processes."""
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def average_grads(self, params) -> None:
        """Average gradients that DDP does not see (a feature loss's adapter) over processes."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def from_main(self, value: float) -> float:
        """Process 0's ``value``, so that every process takes the same decisions."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return float(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _device(option: str, local_rank: int) -> torch.device:
    cuda = torch.cuda.is_available()
    if option == "cuda" and not cuda:
        raise KdxError(
            "device = 'cuda' but PyTorch sees no CUDA GPU here; set device = 'auto' or 'cpu'"
        )
    if option == "cpu" or not cuda:
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def check_precision(precision: str, device: torch.device) -> None:
    if precision != "fp32" and device.type != "cuda":
        raise KdxError(
            f"precision = '{precision}' (mixed precision) needs a CUDA GPU; set it to 'fp32' here"
        )


@contextlib.contextmanager
def cluster(device: str = "auto") -> Iterator[Cluster]:
    """This process's ``Cluster``; joins (and leaves) the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    where = _device(device, int(os.environ.get("LOCAL_RANK", "0")))
    joined = world > 1 and not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
    try:
        yield Cluster(rank, world, where)
    finally:
        if joined:
            dist.destroy_process_group()


def autocast(precision: str, device: torch.device):
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def in_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def publish(c: Cluster, out: Path, kind: str, params: dict, parents: list, fill) -> Artifact:
    """Process 0 writes the artifact (``fill(writer)``); the others wait, then open it."""
    if c.main:
        with Artifact.create(out, kind, params, parents) as writer:
            fill(writer)
        (out.parent / "checkpoints" / f"{kind}.pt").unlink(missing_ok=True)
    c.barrier()
    return writer.artifact if c.main else Artifact.open(out, kind, f"kdexport {kind}")
