"""The log-mel front end, inside the model so the ONNX file takes the waveform.

``LogMel`` computes, for waveforms (B, samples):

    frames    x[t*hop : t*hop + win_length]  for t = 0 .. frames-1   (no centring, no padding)
    spectrum  X[k] = sum_n w[n] x[n] exp(-2 pi i k n / n_fft),  w = periodic Hann window
    power     |X[k]|^2 = (sum w x cos)^2 + (sum w x sin)^2,  k = 0 .. n_fft/2
    mel       M @ power   (M: HTK-mel triangular filters, torchaudio's ``melscale_fbanks``
              with ``mel_scale="htk", norm=None``)
    output    log(mel + log_offset), shape (B, 1, n_mels, frames)

The STFT is one strided ``conv1d`` whose kernels are the windowed cos and sin rows (buffers, not
parameters): Conv, Mul, Add, MatMul and Log are ops every ONNX runtime runs the same way, where
``torch.stft`` exports to the ONNX STFT op that OpenVINO and older runtimes do not all support.
Defaults follow Hello Edge (Zhang et al. 2017, arXiv:1711.07128): 16 kHz, 1 s clips, 20 ms hop,
40 mel bins; the window is 30 ms (n_fft 512) rather than their 40 ms, which costs 40% fewer
multiply-adds in the front end (the student's largest layer) for the same 49 frames.
``log_mel_numpy`` is the same computation in float64 numpy, the reference the tests compare with.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kdexport.errors import KdxError

DEFAULT_CONFIG: dict = {
    "kind": "log-mel",
    "sample_rate": 16000,
    "samples": 16000,  # 1 s clips
    "n_fft": 512,
    "win_length": 480,  # 30 ms, periodic Hann, zero-padded to n_fft
    "hop_length": 320,  # 20 ms
    "n_mels": 40,
    "f_min": 20.0,
    "f_max": 8000.0,
    "mel_scale": "htk",  # 2595 log10(1 + f / 700)
    "power": 2.0,
    # X divided by the window's sum: a full-scale sine's peak bin is 0.25 for any window length,
    # so the log offset is a level in dB full scale (1e-6: a band 54 dB under a full-scale tone).
    "normalized": True,
    "log_offset": 1e-6,  # log(mel + offset): silence gives log(1e-6) = -13.8, not -inf
}


def frontend_config(**overrides) -> dict:
    """The default configuration with ``overrides``; an unknown key or an impossible value is a
    ``KdxError``. The dict describes the front end fully and is what a run and a bundle record."""
    unknown = set(overrides) - set(DEFAULT_CONFIG)
    if unknown:
        raise KdxError(
            f"unknown front-end option(s) {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}"
        )
    cfg = {**DEFAULT_CONFIG, **overrides}
    if not cfg["hop_length"] <= cfg["win_length"] <= cfg["n_fft"] <= cfg["samples"]:
        raise KdxError("front end: need hop_length <= win_length <= n_fft <= samples")
    if not 0 <= cfg["f_min"] < cfg["f_max"] <= cfg["sample_rate"] / 2:
        raise KdxError("front end: need 0 <= f_min < f_max <= sample_rate / 2")
    if cfg["power"] != 2.0 or cfg["mel_scale"] != "htk" or cfg["kind"] != "log-mel":
        raise KdxError("front end: only kind='log-mel', power=2 and mel_scale='htk' are built")
    return cfg


def num_frames(config: dict) -> int:
    """Frames per clip: every full window, none padded (49 for the defaults)."""
    return 1 + (config["samples"] - config["win_length"]) // config["hop_length"]


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(config: dict) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float64 triangular filters, equally spaced in HTK mel, evaluated
    at each FFT bin's frequency (torchaudio's ``melscale_fbanks(..., norm=None, mel_scale='htk')``)."""
    bins = config["n_fft"] // 2 + 1
    freqs = np.linspace(0, config["sample_rate"] / 2, bins)
    lo, hi = _hz_to_mel(np.array([config["f_min"], config["f_max"]], dtype=np.float64))
    edges = _mel_to_hz(np.linspace(lo, hi, config["n_mels"] + 2))
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs - left) / (centre - left)
    down = (right - freqs) / (right - centre)
    return np.maximum(0.0, np.minimum(up, down))


def hann(win_length: int) -> np.ndarray:
    """The periodic Hann window (``torch.hann_window``'s default), float64."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)


def dft_kernels(config: dict) -> np.ndarray:
    """(2 * bins, 1, win_length) float64: the Hann-windowed cos rows, then the sin rows."""
    n, k = np.arange(config["win_length"]), np.arange(config["n_fft"] // 2 + 1)
    angle = 2 * np.pi * np.outer(k, n) / config["n_fft"]
    w = hann(config["win_length"])
    if config["normalized"]:
        w = w / w.sum()
    return np.concatenate([np.cos(angle) * w, np.sin(angle) * w])[:, None, :]


class LogMel(nn.Module):
    """Waveforms (B, samples) float32 -> log-mel features (B, 1, n_mels, frames)."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = frontend_config(**(config or {}))
        self.bins = self.config["n_fft"] // 2 + 1
        self.hop = self.config["hop_length"]
        self.offset = float(self.config["log_offset"])
        # Buffers: they travel with .to() and state_dict but no optimiser touches them.
        self.register_buffer("kernels", torch.from_numpy(dft_kernels(self.config)).float())
        self.register_buffer("mel", torch.from_numpy(mel_filterbank(self.config)).float())

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = nn.functional.conv1d(audio.unsqueeze(1), self.kernels, stride=self.hop)
        real, imag = spec[:, : self.bins], spec[:, self.bins :]
        power = real * real + imag * imag  # (B, bins, frames)
        mel = torch.matmul(self.mel, power)  # (n_mels, bins) @ (B, bins, frames)
        return torch.log(mel + self.offset).unsqueeze(1)


def log_mel_numpy(waves: np.ndarray, config: dict | None = None) -> np.ndarray:
    """``LogMel`` in plain numpy (float64 inside, float32 out): (B, samples) or (samples,) ->
    (B, 1, n_mels, frames). For a device without the graph, and as the reference of the tests."""
    cfg = frontend_config(**(config or {}))
    x = np.atleast_2d(np.asarray(waves, dtype=np.float64))
    if x.shape[1] != cfg["samples"]:
        raise KdxError(
            f"log_mel_numpy: {x.shape[1]} samples per clip, the front end takes {cfg['samples']}"
        )
    starts = np.arange(num_frames(cfg)) * cfg["hop_length"]
    frames = x[:, starts[:, None] + np.arange(cfg["win_length"])]  # (B, frames, win)
    w = hann(cfg["win_length"])
    w = w / w.sum() if cfg["normalized"] else w
    power = np.abs(np.fft.rfft(frames * w, n=cfg["n_fft"])) ** 2
    mel = np.einsum("mk,bfk->bmf", mel_filterbank(cfg), power)
    return np.log(mel + cfg["log_offset"])[:, None].astype(np.float32)
