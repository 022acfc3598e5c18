"""Quantization-aware distillation: the student trains under simulated INT8.

While the context is open, every Conv/Linear weight is fake-quantized per output channel
(symmetric int8) and every Conv/Linear/activation output per tensor (uint8, affine), with
straight-through gradients (``torch.ao.quantization.FakeQuantize``), as in Jacob et al. 2018,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference".
On exit the fake quantizers are removed and the student keeps its own float weights, now robust
to quantization, with its own state_dict keys; the INT8 targets then quantize it with their
post-training tools (calibrated the same way as any student), so QAT and PTQ students are
compared on the same INT8 path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.ao.quantization import (
    FakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
)
from torch.nn.utils import parametrize

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish)


class _WeightFakeQuant(nn.Module):
    """A parametrization: the weight as the INT8 kernel will see it."""

    def __init__(self, channels_axis: int = 0):
        super().__init__()
        self.fq = FakeQuantize(
            observer=MovingAveragePerChannelMinMaxObserver,
            quant_min=-127,
            quant_max=127,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            ch_axis=channels_axis,
        )

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.fq(weight)


def _activation_fake_quant() -> FakeQuantize:
    return FakeQuantize(
        observer=MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )


@contextlib.contextmanager
def fake_quantized(model: nn.Module) -> Iterator[nn.Module]:
    """Train ``model`` under simulated INT8 inside the block; restore plain float modules after."""
    hooks, weighted = [], []
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            parametrize.register_parametrization(module, "weight", _WeightFakeQuant())
            weighted.append(module)
        if isinstance(module, _WEIGHTED + _ACTIVATIONS):
            module.kdx_out_fq = (
                _activation_fake_quant()
            )  # registered as a submodule: moves with .to()
            hooks.append(module.register_forward_hook(lambda m, args, out: m.kdx_out_fq(out)))
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()
        for module in model.modules():
            if hasattr(module, "kdx_out_fq"):
                del module.kdx_out_fq
        for module in weighted:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
