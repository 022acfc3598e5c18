"""``kdexport compare RUN_A RUN_B``: two complete runs side by side (e.g. two machines)."""

from __future__ import annotations

import json
from pathlib import Path

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
    "speed-up A",
    "speed-up B",
]


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


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict:
    """Rows for every target and model in either run, and both runs' machines."""
    a, b = run_figures(run_a), run_figures(run_b)
    rows = []
    for target in sorted(set(a["targets"]) | set(b["targets"])):
        ta, tb = a["targets"].get(target, {}), b["targets"].get(target, {})
        for m in MODELS:
            fa, fb = ta.get(m, {}), tb.get(m, {})
            pa, pb = fa.get("p50_ms"), fb.get("p50_ms")
            rows.append(
                [
                    target,
                    m,
                    _cell(fa.get("accuracy"), ".2%"),
                    _cell(fb.get("accuracy"), ".2%"),
                    _cell(pa, ".4f"),
                    _cell(pb, ".4f"),
                    _cell(pb / pa if pa and pb else None, ".2f"),
                    _cell(ta.get("speedup") if m == "student" else None, ".1f"),
                    _cell(tb.get("speedup") if m == "student" else None, ".1f"),
                ]
            )
    machines = {
        k: f"{f['environment']['cpu']}, {f['environment']['logical_cores']} cores"
        for k, f in (("A", a), ("B", b))
    }
    return {
        "header": HEADER,
        "rows": rows,
        "machines": machines,
        "runs": {"A": str(run_a), "B": str(run_b)},
    }
