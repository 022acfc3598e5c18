"""The keyword-spotting models (kdexport.modalities.speech.models): waveform in, the student's
parameter budget, the teacher's size, and the exported student on ONNX Runtime and OpenVINO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdexport.modalities.speech.frontend import LogMel
from kdexport.modalities.speech.models import (
    MODELS,
    count_macs,
    count_parameters,
    ds_cnn_small,
    kws_cnn_large,
)


def test_the_student_fits_the_ds_cnn_s_budget_and_the_teacher_is_larger():
    student, teacher = ds_cnn_small(12), kws_cnn_large(12)
    params = count_parameters(student), count_parameters(teacher)
    print(f"parameters: student {params[0]:,}, teacher {params[1]:,}")
    assert params[0] <= 40_000
    assert 300_000 <= params[1] <= 1_000_000
    macs = count_macs(student)[0], count_macs(teacher)[0]
    print(f"MACs: student {macs[0]:,}, teacher {macs[1]:,}")
    assert macs[1] >= 4 * macs[0]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_take_waveforms_through_the_front_end(name):
    torch.manual_seed(0)
    model = MODELS[name](10)
    assert isinstance(model[0], LogMel)
    x = torch.randn(3, 16000) * 0.1
    model.train()(x).sum().backward()  # trains: gradients reach the first conv
    assert model[2][0].weight.grad is not None
    model.eval()
    with torch.no_grad():
        y = model(x)
        assert y.shape == (3, 10)
        assert torch.equal(y, model(x))  # deterministic at eval
        assert torch.allclose(model(x[:1]), y[:1], atol=1e-5)  # no batch statistics at eval


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm statistics that are not the identity, so the parity check means something."""
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5, generator=generator)
            m.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


@pytest.mark.backends
def test_the_exported_student_matches_pytorch_on_ort_and_openvino(tmp_path):
    import onnxruntime as ort
    import openvino as ov

    from kdexport.modalities.speech.timing import export_waveform_model

    torch.manual_seed(0)
    model = _trained_looking(ds_cnn_small(12))
    path = tmp_path / "student.onnx"
    export_waveform_model(model, path)
    t = np.arange(16000) / 16000
    x = np.stack(
        [0.3 * np.sin(2 * np.pi * f * t) for f in (300, 1000, 3000)]
        + [np.random.default_rng(0).normal(0, 0.1, 16000)]
    ).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["audio"]
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for got in (session.run(None, {"audio": x})[0], compiled({"audio": x})[0]):
        assert got.shape == (4, 12)
        assert np.abs(got - expected).max() <= 1e-4
