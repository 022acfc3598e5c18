"""The log-mel front end (kdexport.modalities.speech.frontend): PyTorch against the float64
numpy reference, and the exported graph on ONNX Runtime CPU and OpenVINO CPU against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdexport.errors import KdxError
from kdexport.modalities.speech.frontend import (
    DEFAULT_CONFIG,
    LogMel,
    frontend_config,
    log_mel_numpy,
    mel_filterbank,
    num_frames,
)

TOLERANCE = 1e-4  # max abs difference of log-mel values


def signals(n: int = 24, seed: int = 0) -> np.ndarray:
    """Tones, chirps, Gaussian noise and gated tones from -50 dBFS to full scale, some quantised
    to 16 bits, and one silent clip: (n + 1, 16000) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000
    out = []
    for i in range(n):
        amp = 0.95 * 10 ** rng.uniform(-2.5, 0)
        if i % 4 == 0:
            x = amp * np.sin(2 * np.pi * rng.uniform(50, 7900) * t + rng.uniform(0, 6))
        elif i % 4 == 1:
            f0, f1 = rng.uniform(50, 8000, 2)
            x = amp * np.sin(2 * np.pi * (f0 * t + (f1 - f0) / 2 * t * t))
        elif i % 4 == 2:
            x = np.clip(rng.normal(0, amp / 3, 16000), -1, 1)
        else:
            x = amp * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) * (t > 0.3) * (t < 0.7)
        out.append(np.round(x * 32767) / 32767 if i % 8 >= 4 else x)
    return np.stack([*out, np.zeros(16000)]).astype(np.float32)


def torch_features(waves: np.ndarray, model: LogMel | None = None) -> np.ndarray:
    with torch.no_grad():
        return (model or LogMel()).eval()(torch.from_numpy(waves)).numpy()


def test_torch_matches_the_numpy_reference():
    waves = signals()
    y = torch_features(waves)
    assert y.shape == (len(waves), 1, 40, 49) and y.dtype == np.float32
    assert np.abs(y - log_mel_numpy(waves)).max() <= TOLERANCE
    assert np.all(y[-1] == np.float32(np.log(1e-6)))  # silence: the log offset, not -inf


def test_a_tone_lands_in_the_mel_bin_of_its_frequency():
    cfg = frontend_config()
    tone = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000).astype(np.float32)
    band = int(torch_features(tone[None])[0, 0].mean(1).argmax())
    weights = mel_filterbank(cfg)[band]
    bin_hz = 16000 / cfg["n_fft"]
    assert weights[int(round(1000 / bin_hz))] > 0.5  # 1 kHz is near this filter's centre


def test_the_config_describes_the_front_end_and_rejects_unknown_keys():
    model = LogMel({"n_mels": 32, "hop_length": 160})
    assert model.config == {**DEFAULT_CONFIG, "n_mels": 32, "hop_length": 160}
    assert num_frames(model.config) == 98
    assert torch_features(signals(2), model).shape == (3, 1, 32, 98)
    assert list(model.parameters()) == []  # the DFT and mel matrices are buffers
    assert {"kernels", "mel"} <= set(model.state_dict())
    assert all(mel_filterbank(frontend_config()).sum(1) > 0)  # no empty filter
    with pytest.raises(KdxError, match="unknown front-end option"):
        frontend_config(n_mel=40)
    with pytest.raises(KdxError, match="f_max"):
        frontend_config(f_max=9000.0)


@pytest.mark.backends
def test_the_exported_front_end_matches_pytorch_on_ort_and_openvino(tmp_path):
    import onnxruntime as ort
    import openvino as ov

    from kdexport.modalities.speech.timing import export_waveform_model

    model = LogMel().eval()
    path = tmp_path / "logmel.onnx"
    export_waveform_model(model, path)
    waves = signals()
    expected = torch_features(waves, model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["audio"]
    on_ort = session.run(None, {"audio": waves})[0]
    # f32: OpenVINO's CPU plugin would run bf16 on CPUs that have it (errors of ~10 here)
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    on_openvino = compiled({"audio": waves})[0]
    assert np.abs(on_ort - expected).max() <= TOLERANCE
    assert np.abs(on_openvino - expected).max() <= TOLERANCE
    assert session.run(None, {"audio": waves[:1]})[0].shape == (1, 1, 40, 49)  # dynamic batch
