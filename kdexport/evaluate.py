"""Accuracy and parity figures of any model's outputs against labels and reference outputs.

Parity follows numpy's ``allclose`` convention: every element must satisfy
``|a - b| <= atol + rtol * |b|`` (``b`` the reference), so that the bound scales with the
outputs' size, and top-1 agreement must reach ``min_agreement``.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

import numpy as np


# What ``parity`` returns, as the stages record it in their manifests' checks (JSON): a
# TypedDict describes exactly that and costs nothing at run time. Outputs of another shape
# give only ``passed`` and ``summary``.
class WorstElement(TypedDict):
    index: list[int]
    actual: float
    reference: float


class Parity(TypedDict):
    passed: bool
    summary: str
    samples: NotRequired[int]
    max_abs_diff: NotRequired[float]
    worst_element: NotRequired[WorstElement]
    max_rel_diff: NotRequired[float]
    frac_out_of_bound: NotRequired[float]
    top1_agreement: NotRequired[float | None]
    atol: NotRequired[float | None]
    rtol: NotRequired[float]
    min_agreement: NotRequired[float | None]


def _bound_text(atol: float | None, rtol: float) -> str:
    if atol is None:
        return "not gated"
    return f"atol {atol:g}" + (f" + rtol {rtol:g}" if rtol else "")


def parity(
    actual: np.ndarray,
    reference: np.ndarray,
    atol: float | None,
    *,
    rtol: float = 0.0,
    min_agreement: float | None = 1.0,
) -> Parity:
    """Compare outputs with the reference (PyTorch's, or another model's).

    Passes when every element is within ``atol + rtol·|reference|`` and top-1 agreement is at
    least ``min_agreement`` (``atol`` None: not gated, recorded only). Records the worst
    absolute and relative differences, the share of elements out of bound and the agreement.
    """
    if actual.shape != reference.shape:
        return {"passed": False, "summary": f"output shape {actual.shape} != {reference.shape}"}
    a, b = actual.astype(np.float64), reference.astype(np.float64)
    diff = np.abs(a - b)
    rel = diff / np.maximum(np.abs(b), 1e-6)
    out = diff > (atol or 0.0) + rtol * np.abs(b) if atol is not None else np.zeros_like(diff, bool)
    finite = bool(np.isfinite(a).all())
    # top-1 over axis 1 (classes); outputs with no class axis have no agreement to gate
    agree = float((a.argmax(1) == b.argmax(1)).mean()) if a.ndim >= 2 and a.size else None
    max_abs = float(diff.max()) if diff.size else 0.0
    worst = np.unravel_index(int(diff.argmax()), diff.shape) if diff.size else ()
    passed = finite and not out.any()
    passed = passed and (min_agreement is None or agree is None or agree >= min_agreement)
    bound = _bound_text(atol, rtol)
    return {
        "passed": passed,
        "samples": int(len(reference)),
        "max_abs_diff": max_abs,
        "worst_element": {
            "index": [int(i) for i in worst],
            "actual": float(a[worst]) if diff.size else 0.0,
            "reference": float(b[worst]) if diff.size else 0.0,
        },
        "max_rel_diff": float(rel.max()) if rel.size else 0.0,
        "frac_out_of_bound": float(out.mean()) if out.size else 0.0,
        "top1_agreement": agree,
        "atol": atol,
        "rtol": rtol,
        "min_agreement": min_agreement,
        "summary": (
            f"max abs diff {max_abs:.3g}, {out.mean() if out.size else 0.0:.2%} of elements beyond "
            f"{bound}, top-1 agreement {'-' if agree is None else f'{agree:.2%}'} on {len(reference)} samples"
            + ("" if finite else ", non-finite outputs")
        ),
    }


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy, 0..1."""
    return float((logits.argmax(1) == labels).mean())
