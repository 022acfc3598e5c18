"""A placement plan (``kdexport plan``'s plan.json) as a bundle carries it: the file read and
checked, and per device the variant it runs."""

from __future__ import annotations

import json
from pathlib import Path

from kdexport.artifact import sha256
from kdexport.bundle.runner import PORTABLE
from kdexport.errors import KdxError

PLAN_KIND = "kdx-plan"
PLAN_FORMAT = 1


def read_plan(path: Path) -> dict:
    """A ``plan.json`` written by ``kdexport plan``, checked for its kind and format."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KdxError(f"{path}: no such plan; write one with kdexport plan RUN ...") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise KdxError(
            f"{path}: unreadable plan ({e}); write it again with kdexport plan"
        ) from None
    if not isinstance(result, dict) or result.get("kind") != PLAN_KIND:
        raise KdxError(f"{path}: not a plan of `kdexport plan` (give its plan.json)")
    if result.get("format_version") != PLAN_FORMAT:
        raise KdxError(
            f"{path}: plan format {result.get('format_version')}, this kdexport reads format "
            f"{PLAN_FORMAT}; plan again with this version"
        )
    return result


def bundle_plan(path: Path, student: str) -> dict:
    """What a bundle carries of the plan at ``path``: per device its fingerprint, the chosen
    variant (or None and the closest), the budget, the planned p90 and the settings it was
    measured with; and which compiled targets and models the bundle needs for the choices.
    Of a family's plan, a member's bundle (``student``) carries the devices it serves; each
    other device names the bundle that serves it."""
    result = read_plan(path)
    family = {m["student"]: name for name, m in (result.get("family") or {}).items()}
    bundles = {"": result["student"], **{name: s for s, name in family.items()}}
    if student not in bundles.values():
        raise KdxError(
            f"{path}: a plan for {result['student']}, not this run's {student}; plan this run"
        )
    member = family.get(student, "")
    devices, targets, teacher = {}, [], False
    for name, d in result["devices"].items():
        c = d["choice"]
        entry = {"fingerprint": d["fingerprint"], "budget_ms": d["budget_ms"], "variant": None}
        if d.get("capacity"):
            entry["capacity"] = d["capacity"]
        if c is not None and c.get("member", "") != member:  # a family member's bundle runs it
            entry["bundle"] = bundles[c["member"]]
            entry["member"] = c["member"] or "the run's own student"
        elif c is None:
            closest = d.get("closest")
            entry["closest"] = closest and f"closest {closest['variant']}: {closest['reason']}"
        else:
            entry.update(variant=c["variant"], p90_ms=c["p90_ms"], settings=c.get("settings"))
            teacher |= c["model"] == "teacher"
            if c["target"] != PORTABLE and c["target"] not in targets:
                targets.append(c["target"])
        devices[name] = entry
    return {
        "batch": result["batch"],
        "plan_sha256": sha256(Path(path)),
        "devices": devices,
        "targets": targets,
        "teacher": teacher,
    }
