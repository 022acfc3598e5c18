"""Accuracy and parity figures of any model's outputs against labels and reference outputs."""

from __future__ import annotations

import numpy as np


def parity(
    actual: np.ndarray,
    reference: np.ndarray,
    tolerance: float | None,
    min_agreement: float | None = 1.0,
) -> dict:
    """Compare outputs with the PyTorch reference.

    Passes when the max absolute difference is within ``tolerance`` and top-1 agreement is at
    least ``min_agreement`` (None: not gated, as for INT8). Also reports the max relative
    difference and the share of elements off by more than 1e-2.
    """
    if actual.shape != reference.shape:
        return {"passed": False, "summary": f"output shape {actual.shape} != {reference.shape}"}
    diff = np.abs(actual.astype(np.float64) - reference.astype(np.float64))
    rel = diff / np.maximum(np.abs(reference), 1e-6)
    agree = float((actual.argmax(1) == reference.argmax(1)).mean())
    max_abs = float(diff.max()) if diff.size else 0.0
    finite = bool(np.isfinite(actual).all())
    passed = finite and (tolerance is None or max_abs <= tolerance)
    passed = passed and (min_agreement is None or agree >= min_agreement)
    return {
        "passed": passed,
        "samples": int(len(reference)),
        "max_abs_diff": max_abs,
        "max_rel_diff": float(rel.max()) if rel.size else 0.0,
        "frac_off_1e-2": float((diff > 1e-2).mean()) if diff.size else 0.0,
        "top1_agreement": agree,
        "tolerance": tolerance,
        "summary": (
            f"max abs diff {max_abs:.3g} (tolerance {tolerance if tolerance is not None else '-'}), top-1 agreement "
            f"{agree:.2%} on {len(reference)} samples" + ("" if finite else ", non-finite outputs")
        ),
    }


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy, 0..1."""
    return float((logits.argmax(1) == labels).mean())
