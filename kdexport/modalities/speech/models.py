"""Keyword-spotting models that take raw waveforms: the front end is their first module.

Both factories return ``nn.Sequential(LogMel, FeatureNorm, network)``, so the exported ONNX
model's input is the waveform (B, samples) float32 and a device needs no audio code.

    python -m kdexport.modalities.speech.models     # parameters, MACs, ONNX Runtime CPU latency
"""

from __future__ import annotations

import torch
from torch import nn

from kdexport.errors import KdxError
from kdexport.modalities.speech.frontend import LogMel
from kdexport.zoo import Scheme


class FeatureNorm(nn.Module):
    """Per-mel-bin normalisation: a BatchNorm over the mel axis of (B, 1, n_mels, frames).

    Log-mel values sit around -14..+5 with a different mean per bin; the first conv trains
    better on zero-mean inputs. At eval it is a fixed affine map per bin (running statistics),
    which the exporter folds into one Mul and Add.
    """

    def __init__(self, n_mels: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(n_mels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.squeeze(1)).unsqueeze(1)


def _conv_bn(c_in: int, c_out: int, kernel, stride=1, groups: int = 1) -> list[nn.Module]:
    padding = tuple(k // 2 for k in kernel) if isinstance(kernel, tuple) else kernel // 2
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


def _with_frontend(network: nn.Module, frontend_config: dict | None) -> nn.Sequential:
    frontend = LogMel(frontend_config)
    return nn.Sequential(frontend, FeatureNorm(frontend.config["n_mels"]), network)


def ds_cnn_small(num_classes: int = 12, frontend_config: dict | None = None) -> nn.Module:
    """The student: Hello Edge's DS-CNN-S (Zhang et al. 2017, arXiv:1711.07128, table 9).

    A 10x4 conv with stride 2 (64 channels), then 4 depthwise-separable blocks (3x3 depthwise,
    1x1 pointwise, each followed by BatchNorm and ReLU), global average pooling and a linear
    layer: 23.3 k learnable parameters for 12 classes (the paper's DS-CNN-S: 38.6 k, on 10
    MFCCs; here 40 log-mel bins), 11.1 M MACs after the front end's 12.6 M.
    """
    c = 64
    layers = _conv_bn(1, c, (10, 4), stride=2)
    for _ in range(4):
        layers += _conv_bn(c, c, 3, groups=c) + _conv_bn(c, c, 1)
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return _with_frontend(nn.Sequential(*layers, *head), frontend_config)


def kws_cnn_large(num_classes: int = 12, frontend_config: dict | None = None) -> nn.Module:
    """The teacher: a VGG-style CNN (3x3 convs, BatchNorm, ReLU; max-pool between stages) at
    full feature resolution: 0.88 M parameters, 219 M MACs after the front end (20x the
    student's), sized so that the student is clearly (6x+) faster at batch 1 with the front end
    that both share."""
    layers: list[nn.Module] = []
    c_in = 1
    for i, c in enumerate([56, 112, 224]):
        layers += _conv_bn(c_in, c, 3) + _conv_bn(c, c, 3)
        if i < 2:
            layers.append(nn.MaxPool2d(2))
        c_in = c
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c_in, num_classes)]
    return _with_frontend(nn.Sequential(*layers, *head), frontend_config)


MODELS = {"ds-cnn-small": ds_cnn_small, "kws-cnn-large": kws_cnn_large}


def count_parameters(model: nn.Module) -> int:
    """Learnable parameters (the front end's DFT and mel matrices are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, samples: int = 16000) -> tuple[int, int]:
    """(MACs of the whole model, MACs of its front end) for one clip, by torch's flop counter
    (which counts 2 FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, samples)
    out = []
    for module in (model, model[0]):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module.eval()(x)
        out.append(int(counter.get_total_flops()) // 2)
    return out[0], out[1]


def main() -> None:
    """Print parameters, MACs and ONNX Runtime CPU batch-1 latency of both models."""
    from kdexport.modalities.speech.timing import onnx_latency_ms

    rows = {name: factory(12) for name, factory in MODELS.items()}
    latency = onnx_latency_ms(rows)
    for name, model in rows.items():
        macs, front = count_macs(model)
        print(
            f"{name}: {count_parameters(model):,} parameters, {macs / 1e6:.1f} M MACs "
            f"({front / 1e6:.1f} M in the front end), ORT CPU batch 1: {latency[name]:.3f} ms"
        )
    student, teacher = latency["ds-cnn-small"], latency["kws-cnn-large"]
    print(f"teacher / student latency: {teacher / student:.1f}x")


if __name__ == "__main__":
    main()


def _built(spec: str, num_classes: int, samples: int) -> nn.Module:
    """``speech:NAME``: a model of ``MODELS`` whose front end reads windows of ``samples``
    (the run's clip length; the input's first axis after the batch)."""
    from kdexport.modalities.speech.frontend import frontend_config

    name = spec.partition(":")[2]
    if name not in MODELS:
        raise KdxError(f"unknown speech model '{name}'; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes, frontend_config(samples=samples))


# The model-spec scheme of speech (kdexport.zoo.Scheme): the keyword-spotting CNNs above.
SCHEMES = {"speech": Scheme(_built)}
