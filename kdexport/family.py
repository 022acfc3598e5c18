"""A family of students in one run (issue 23): ``[family] students = ["prune:0.3", "prune:0.6",
"zoo:digits-cnn-small"]``. Each member is a run of its own in ``RUN/family/NAME`` (its recipe
the run's with ``distill.student`` set to the member), sharing the run's trained teacher (its
files linked, not trained again): distilled, exported, compiled, benchmarked and reported as
any run. ``kdexport plan`` chooses per device among every member and precision
(``kdexport.plan``); ``kdexport package --plan`` ships each device its own member.

This module names, lists and reads the members; ``kdexport.pipeline`` runs them.
"""

from __future__ import annotations

import re
from pathlib import Path

from kdexport.artifact import MANIFEST
from kdexport.errors import KdxError

FOLDER = "family"


def member_name(spec: str) -> str:
    """The folder name of a member: its spec with every run of other characters than letters,
    digits, dots and dashes made one dash (``prune:macs=0.3`` -> ``prune-macs-0.3``)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", spec).strip("-.") or "member"


def check_students(students: list[str]) -> dict[str, str]:
    """Member name -> spec; a spec (or two specs of one name) given twice is one line."""
    named: dict[str, str] = {}
    for spec in students:
        name = member_name(spec)
        if name in named:
            raise KdxError(
                f"family.students: '{spec}' repeats '{named[name]}' (both are member "
                f"'{name}'); give each member once"
            )
        named[name] = spec
    return named


def members(run_dir: str | Path) -> dict[str, Path]:
    """The family's complete members (their run report written), by name."""
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if (p / MANIFEST).is_file()}
