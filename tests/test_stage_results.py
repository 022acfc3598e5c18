"""What each stage writes into its manifest's ``checks`` is declared by a TypedDict in the module
that writes it (``export.ExportChecks``, ``compile.CompileChecks``, ...): on a real run, every key
written is declared, nested tables included, and every required key is there. A stage that starts
writing an undeclared key fails here until its TypedDict says so."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import (
    NotRequired,
    Required,
    TypedDict,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

import pytest
from conftest import kdx

from kdexport.baseline import BaselineChecks
from kdexport.benchmark import BenchmarkChecks
from kdexport.compile import CompileChecks
from kdexport.distill import StudentChecks
from kdexport.export import ExportChecks
from kdexport.rundir import STAGES
from kdexport.teacher import TeacherChecks
from kdexport.tune import TuneChecks

DECLARED = {
    "teacher": TeacherChecks,
    "student": StudentChecks,
    "export": ExportChecks,
    "compile": CompileChecks,
    "benchmark": BenchmarkChecks,
}


def _required(td) -> set[str]:
    """The required keys of ``td``, read off its hints: ``__required_keys__`` is wrong for a
    TypedDict declared under ``from __future__ import annotations`` before Python 3.14 (it
    cannot see ``NotRequired`` inside a string annotation)."""
    hints = get_type_hints(td, include_extras=True)
    out = set()
    for key, hint in hints.items():
        origin = get_origin(hint)
        if origin is Required or (origin is not NotRequired and td.__total__):
            out.add(key)
    return out


def problems(value, tp, where: str) -> list[str]:
    """Where ``value`` has a key its type does not declare, or lacks a required one: through
    TypedDicts, ``dict[str, X]``, ``list[X]`` and unions (``X | None``)."""
    if is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__}, not a table ({tp.__name__})"]
        hints = get_type_hints(tp)
        out = [f"{where}.{k}: not declared in {tp.__name__}" for k in value if k not in hints]
        out += [
            f"{where}.{k}: required by {tp.__name__}, missing"
            for k in sorted(_required(tp))
            if k not in value
        ]
        for k, v in value.items():
            if k in hints:
                out += problems(v, hints[k], f"{where}.{k}")
        return out
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return []
        found = [problems(value, a, where) for a in args if a is not type(None)]
        return [] if any(not f for f in found) else found[0]
    if origin is dict and isinstance(value, dict):
        return [p for k, v in value.items() for p in problems(v, args[1], f"{where}[{k!r}]")]
    if origin is list and isinstance(value, list):
        return [p for i, v in enumerate(value) for p in problems(v, args[0], f"{where}[{i}]")]
    return []


def checks_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["checks"]


def test_every_stage_has_its_checks_declared():
    assert set(DECLARED) == set(STAGES)


class Inner(TypedDict):
    a: int
    b: NotRequired[str]


class Outer(TypedDict):
    inner: Inner
    by_name: dict[str, Inner]
    maybe: NotRequired[Inner | None]


def test_the_check_finds_undeclared_and_missing_keys():
    good = {"inner": {"a": 1}, "by_name": {"x": {"a": 2, "b": "y"}}, "maybe": None}
    assert problems(good, Outer, "c") == []
    bad = {"inner": {"a": 1, "z": 0}, "by_name": {"x": {"b": "y"}}, "extra": 1}
    assert problems(bad, Outer, "c") == [
        "c.extra: not declared in Outer",
        "c.inner.z: not declared in Inner",
        "c.by_name['x'].a: required by Inner, missing",
    ]


def test_a_runs_checks_are_what_their_stages_declare(fast_cli_run):
    run = fast_cli_run[0]
    for stage, declared in DECLARED.items():
        checks = checks_of(run / stage)
        assert problems(checks, declared, stage) == []
    # the nested tables were there to be checked: per model and per target
    compile_checks = checks_of(run / "compile")
    assert compile_checks["targets"], "no compiled target to check"
    assert all({"teacher", "student"} <= set(t) for t in compile_checks["targets"].values())
    assert checks_of(run / "benchmark")["targets"]


@pytest.mark.parametrize("verb", ["baseline", "tune"])
def test_the_verbs_checks_are_what_they_declare(tmp_path, verb):
    sets = ["teacher.model=zoo:mlp-tiny", "teacher.epochs=1"]
    sets += ["distill.student=zoo:mlp-tiny", "distill.epochs=1"]
    run = tmp_path / "run"
    kdx("train-teacher", run, *(a for s in sets for a in ("--set", s)))
    if verb == "baseline":
        kdx("distill", run, "--baseline", "--seeds", "1")
        assert problems(checks_of(run / "student"), StudentChecks, "student") == []
        assert problems(checks_of(run / "baseline"), BaselineChecks, "baseline") == []
    else:
        kdx("tune", run, "--temperature", "2", "--kd-weight", "0.5")
        assert problems(checks_of(run / "tune"), TuneChecks, "tune") == []
    assert problems(checks_of(run / "teacher"), TeacherChecks, "teacher") == []
