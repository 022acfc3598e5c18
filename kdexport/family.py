"""A family of students in one run (issue 23): ``[family] students = ["prune:0.3", "prune:0.6",
"zoo:digits-cnn-small"]``, and with ``budgets = "budgets.toml"`` (the file ``kdexport plan
--budgets`` reads) a cut of the teacher to each device's budget: a member
``prune:budget_ms=B@TARGET`` per distinct budget and target. Each member is a run of its own in ``RUN/family/NAME`` (its recipe
the run's with ``distill.student`` set to the member), sharing the run's trained teacher (its
files linked, not trained again): distilled, exported, compiled, benchmarked and reported as
any run. ``kdexport plan`` chooses per device among every member and precision
(``kdexport.plan``); ``kdexport package --plan`` ships each device its own member.

This module names, lists and reads the members; ``kdexport.pipeline`` runs them.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from kdexport.artifact import MANIFEST
from kdexport.errors import KdxError

FOLDER = "family"
BUDGET_KEYS = {"budget_ms", "max_mb", "target", "qps", "p99_ms", "max_servers"}
CUT_TARGET = "ort-cpu"  # where a device's cut is timed here when its table names no target


def budget_tables(path: str | Path) -> dict[str, dict]:
    """A budgets file: one table per device name or fingerprint, with ``budget_ms``, optionally
    ``max_mb`` and ``target`` (the target of this machine a cut for the device is timed on;
    ``kdexport plan`` reads the first two, a family the first and the last); or a capacity goal
    for this machine's kind of server: ``qps`` at ``p99_ms``, on at most ``max_servers`` (1)."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KdxError(f"{path}: no such budgets file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise KdxError(f"{path}: unreadable budgets TOML ({e})") from None
    for key, table in raw.items():
        if not isinstance(table, dict) or set(table) - BUDGET_KEYS:
            raise KdxError(f"{path}: [{key}] takes {', '.join(sorted(BUDGET_KEYS))} only")
    return raw


def budget_students(path: str | Path) -> list[str]:
    """One ``prune:budget_ms=B@TARGET`` member per distinct budget and target of the devices of
    the budgets file at ``path`` ("" : none)."""
    if not path:
        return []
    specs = []
    for key, table in budget_tables(path).items():
        if "budget_ms" not in table and "qps" in table:
            continue  # a capacity goal: served by a variant, never a cut of its own
        if "budget_ms" not in table:
            raise KdxError(
                f"family.budgets: [{key}] of {path} has no budget_ms to cut the teacher to"
            )
        spec = f"prune:budget_ms={table['budget_ms']}@{table.get('target', CUT_TARGET)}"
        specs += [] if spec in specs else [spec]
    return specs


def member_name(spec: str) -> str:
    """The folder name of a member: its spec with every run of other characters than letters,
    digits, dots and dashes made one dash (``prune:macs=0.3`` -> ``prune-macs-0.3``)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", spec).strip("-.") or "member"


def check_students(students: list[str], budgets: str | Path = "") -> dict[str, str]:
    """Member name -> spec, the ``students`` then a cut per budget of the file ``budgets``; a
    spec (or two specs of one name) given twice is one line."""
    named: dict[str, str] = {}
    for spec in [*students, *budget_students(budgets)]:
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
