"""``kdexport status RUN``: which stages of a run directory completed, and which did not.

Each stage directory records its own completion: its manifest is written last, inside a
temporary directory that is renamed into place, so a stage is complete exactly when its
manifest is there and its files and parents still match it. A leftover temporary directory
means a stage was interrupted.
"""

from __future__ import annotations

from pathlib import Path

from kdexport.artifact import MANIFEST, Artifact, leftovers
from kdexport.errors import KdxError
from kdexport.rundir import STAGES


def run_status(run_dir: str | Path) -> dict[str, dict]:
    """Stage -> {"state": complete|missing|interrupted|invalid, "detail": ...}, then the report."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KdxError(f"{run_dir}: no such run directory")
    out = {}
    for name, (kind, command) in STAGES.items():
        path = run_dir / name
        try:
            art = Artifact.open(path, kind, f"{command} {run_dir}")
            out[name] = {"state": "complete", "detail": art.manifest.get("created", "")}
        except KdxError as e:
            missing = not (path / MANIFEST).is_file()
            state = ("interrupted" if leftovers(path) else "missing") if missing else "invalid"
            out[name] = {"state": state, "detail": str(e)}
    report = (run_dir / MANIFEST).is_file() and all(s["state"] == "complete" for s in out.values())
    out["report"] = {
        "state": "complete" if report else "missing",
        "detail": "" if report else f"run `kdexport report {run_dir}` once every stage is complete",
    }
    return out
