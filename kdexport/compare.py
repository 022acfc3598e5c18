"""``kdexport compare RUN_A RUN_B``: two complete runs side by side (e.g. two machines).

Two runs cannot be measured interleaved, so each figure is judged against both runs' measured
spread: a p50's interval is the interquartile range of its per-round medians, widened to hold
its 95% confidence interval; a speed-up's is the IQR of its per-round ratios. Two figures
differ when their intervals do not overlap; otherwise they are the same within the spread.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kdexport.artifact import MANIFEST
from kdexport.errors import KdxError
from kdexport.rundir import MODELS

HEADER = [
    "target",
    "model",
    "accuracy A",
    "accuracy B",
    "p50 ms A",
    "p50 ms B",
    "B / A",
    "p50 verdict",
    "speed-up A",
    "speed-up B",
    "speed-up verdict",
]
SAME, UNKNOWN = "same within spread", "-"


def run_figures(run_dir: str | Path) -> dict:
    """The figures of a complete run (its run-level manifest.json)."""
    path = Path(run_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        return manifest["figures"]
    except FileNotFoundError:
        raise KdxError(
            f"{run_dir} is not a complete run (no {MANIFEST}); run `kdexport report {run_dir}`"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KdxError(
            f"{path}: unreadable run manifest ({type(e).__name__}); run `kdexport report` again"
        ) from None


def _cell(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


def p50_interval(f: dict) -> list[float] | None:
    """A p50's measured spread: its per-round medians' IQR, widened to hold its 95% CI."""
    if not isinstance(f.get("p50_ms"), int | float):
        return None
    lo = hi = f["p50_ms"]
    if rounds := f.get("round_medians_ms"):
        q1, q3 = np.percentile(rounds, [25, 75])
        lo, hi = min(lo, float(q1)), max(hi, float(q3))
    if ci := f.get("p50_ci95_ms"):
        lo, hi = min(lo, ci[0]), max(hi, ci[1])
    return [lo, hi]


def verdict(a: list[float] | None, b: list[float] | None, higher: str, lower: str) -> str:
    """'same within spread' when the intervals overlap, else which way B differs from A."""
    if not a or not b:
        return UNKNOWN
    if b[0] > a[1]:
        return higher
    if b[1] < a[0]:
        return lower
    return SAME


def _speedup_interval(entry: dict) -> list[float] | None:
    d = entry.get("speedup_detail")
    return d["iqr"] if d else None


def check_settings(a: dict, b: dict, allow: bool) -> list[str]:
    """Refuse runs benchmarked with other thread or CPU settings (a warning with ``allow``)."""
    sa, sb = a.get("benchmark_settings"), b.get("benchmark_settings")
    if not sa or not sb:
        return []
    differ = [
        f"{k} {sa.get(k)} vs {sb.get(k)}" for k in ("threads", "cpus") if sa.get(k) != sb.get(k)
    ]
    if not differ:
        return []
    what = f"runs A and B were benchmarked with different settings ({', '.join(differ)})"
    if not allow:
        raise KdxError(
            f"{what}; benchmark both with the same benchmark.threads and benchmark.cpus, or "
            "pass --allow-different-settings"
        )
    return [f"{what}: differences may come from the settings, not the models"]


def _row(target: str, m: str, ta: dict, tb: dict) -> list[str]:
    fa, fb = ta.get(m, {}), tb.get(m, {})
    pa, pb = fa.get("p50_ms"), fb.get("p50_ms")
    student = m == "student"
    return [
        target,
        m,
        _cell(fa.get("accuracy"), ".2%"),
        _cell(fb.get("accuracy"), ".2%"),
        _cell(pa, ".4f"),
        _cell(pb, ".4f"),
        _cell(pb / pa if pa and pb else None, ".2f"),
        verdict(p50_interval(fa), p50_interval(fb), "B slower", "B faster"),
        _cell(ta.get("speedup") if student else None, ".2f"),
        _cell(tb.get("speedup") if student else None, ".2f"),
        verdict(_speedup_interval(ta), _speedup_interval(tb), "B higher", "B lower")
        if student
        else UNKNOWN,
    ]


def compare_runs(
    run_a: str | Path, run_b: str | Path, allow_different_settings: bool = False
) -> dict:
    """Rows for every target and model in either run, and both runs' machines; whether each
    p50 and speed-up differs beyond the two runs' measured spread."""
    a, b = run_figures(run_a), run_figures(run_b)
    warnings = check_settings(a, b, allow_different_settings)
    rows = []
    for target in sorted(set(a["targets"]) | set(b["targets"])):
        ta, tb = a["targets"].get(target, {}), b["targets"].get(target, {})
        rows += [_row(target, m, ta, tb) for m in MODELS]
    machines = {
        k: f"{f['environment']['cpu']}, {f['environment']['logical_cores']} cores"
        for k, f in (("A", a), ("B", b))
    }
    return {
        "header": HEADER,
        "rows": rows,
        "machines": machines,
        "runs": {"A": str(run_a), "B": str(run_b)},
        "warnings": warnings,
    }
