"""Fleet results: ``run.py bench`` results copied back from devices, merged into one table
(``kdexport import-results``)."""

from __future__ import annotations

import json
from pathlib import Path

from kdexport.artifact import write_text
from kdexport.bundle import runner as bundle_runner
from kdexport.bundle.runner import parse_point
from kdexport.bundle.runner import point_order as shape_order
from kdexport.errors import KdxError
from kdexport.markdown import markdown_table

FLEET_HEADER = [
    "device",
    "CPU",
    "cores",
    "runtime",
    "bundle",
    "model",
    "batch",
    "student p50 ms",
    "student p90 ms",
    "teacher p50 ms",
    "speed-up",
]


def read_result(path: Path, serving: bool = False) -> dict:
    """One ``run.py bench`` result file, checked for its kind, format and required keys; a
    ``--scenario server|offline`` result (requests a second) only where ``serving``."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KdxError(f"{path}: no such result file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise KdxError(f"{path}: unreadable result ({e}); copy it from the device again") from None
    if not isinstance(result, dict) or result.get("kind") != bundle_runner.RESULT_KIND:
        raise KdxError(f"{path}: not a result of `python run.py bench`")
    if result.get("format_version", 0) > bundle_runner.RESULT_FORMAT:
        raise KdxError(f"{path}: written by a newer run.py; upgrade kdexport to import it")
    if "serving" in result and not serving:
        raise KdxError(
            f"{path}: a `run.py bench --scenario` result (requests a second at a p99 bound): "
            "fleet tables take latency results (`python run.py bench`); plans take both"
        )
    kind = "serving" if "serving" in result else "results"
    for key in ("device", "bundle.name", "environment.cpu", "options", kind):
        value = result
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            raise KdxError(f"{path}: malformed result, no '{key}'; run `python run.py bench` again")
    if kind == "serving":
        return result
    timed = [m for m in ("student", "teacher") if isinstance(result["results"].get(m), dict)]
    if not timed or not all(isinstance(result["results"][m].get("latency"), dict) for m in timed):
        raise KdxError(f"{path}: malformed result, no latency; run `python run.py bench` again")
    return result


def _rows(result: dict) -> list[dict]:
    """The result's student rows (none for a target that holds the teacher alone)."""
    env, res = result["environment"], result["results"]
    if "student" not in res:
        return []
    runtime = res["student"].get("runtime", {})
    provider = (runtime.get("providers") or ["?"])[0].replace("ExecutionProvider", "")
    rows = []
    for size, s in sorted(res["student"]["latency"].items(), key=lambda kv: shape_order(kv[0])):
        teacher = res.get("teacher", {}).get("latency", {}).get(size, {})
        rows.append(
            {
                "device": result["device"],
                "cpu": env["cpu"],
                "cores": env.get("logical_cores"),
                "runtime": f"onnxruntime {env.get('versions', {}).get('onnxruntime', '?')} {provider}",
                "bundle": result["bundle"]["name"],
                "model": result["options"].get("target") or "portable",
                # a batch size, or a point of several axes as it is ("1x128")
                "batch": size if len(parse_point(size)) > 1 else int(size),
                "student_p50_ms": s["p50_ms"],
                "student_p90_ms": s["p90_ms"],
                "teacher_p50_ms": teacher.get("p50_ms"),
                "speedup": res.get("speedup", {}).get(size),
                "created": result.get("created"),
            }
        )
    return rows


def import_results(paths: list[str | Path], out: str | Path | None = None) -> dict:
    """Merge ``run.py bench`` results into one fleet table; write it as Markdown to ``out``.

    A device measured twice on the same model (bundle name and target) keeps its newest result.
    """
    if not paths:
        raise KdxError("give at least one result file from `python run.py bench`")
    latest: dict[tuple, dict] = {}
    for path in map(Path, paths):
        result = read_result(path)
        key = (result["device"], result["bundle"]["name"], result["options"].get("target"))
        if key not in latest or result.get("created_unix", 0) >= latest[key].get("created_unix", 0):
            latest[key] = result
    rows = sorted(
        (r for res in latest.values() for r in _rows(res)),
        key=lambda r: (r["device"], r["bundle"], r["model"], shape_order(str(r["batch"]))),
    )
    fleet = {"devices": len({k[0] for k in latest}), "results": len(paths), "rows": rows}
    if out is not None:
        write_text(Path(out), fleet_markdown(fleet))
    return fleet


def fleet_cells(fleet: dict) -> list[list[str]]:
    """The fleet table's cells, one row per device, bundle and batch size."""

    def ms(v) -> str:
        return "" if v is None else f"{v:.3f}"

    return [
        [
            r["device"],
            r["cpu"],
            str(r["cores"] or ""),
            r["runtime"],
            r["bundle"],
            r["model"],
            str(r["batch"]),
            ms(r["student_p50_ms"]),
            ms(r["student_p90_ms"]),
            ms(r["teacher_p50_ms"]),
            "" if r["speedup"] is None else f"{r['speedup']:.1f}x",
        ]
        for r in fleet["rows"]
    ]


def fleet_markdown(fleet: dict) -> str:
    lines = [
        "# kdexport fleet",
        "",
        "Latency measured on each device by the bundle's `run.py bench` (batch-size rows); "
        "the speed-up is teacher p50 / student p50 on the same device.",
        "",
        *markdown_table(FLEET_HEADER, fleet_cells(fleet)),
    ]
    return "\n".join(lines) + "\n"
