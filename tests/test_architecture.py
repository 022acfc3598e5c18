"""The package's shape: no import circle, no private name imported across modules, and the
commands that only read JSON import no torch (tools/check_architecture.py measures the same)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "check_architecture", ROOT / "tools" / "check_architecture.py"
)
arch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(arch)


def test_no_import_circle_and_no_private_cross_import():
    graph, private = arch.imports(arch.modules())
    assert arch.circles(graph) == []
    assert private == []


def test_the_checks_catch_a_circle_and_a_private_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert arch.circles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    "command", ["status", "compare", "import-results", "verify", "targets", "plan"]
)
def test_json_commands_import_no_torch(command, tmp_path):
    args = {
        "status": ["status", str(tmp_path)],
        "compare": ["compare", str(tmp_path), str(tmp_path)],
        "import-results": ["import-results", str(tmp_path / "r.json")],
        "verify": ["verify", str(tmp_path / "b")],
        "targets": ["targets"],
        "plan": ["plan", str(tmp_path), "--budget-ms", "5"],
    }[command]
    assert not arch.imported_heavy(args)["torch"]
