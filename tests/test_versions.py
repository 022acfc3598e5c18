"""Versions: no private names of a dependency anywhere (``onnx._serialize`` broke every GPU target
on onnx 1.23.1), and the ONNX models kdexport builds state an IR version old runtimes read."""

import ast
import re
import tomllib
from pathlib import Path

import onnx
import pytest
from packaging.version import Version

from kdexport.onnxfile import IR_VERSION, OPSET, make_model

pytestmark = pytest.mark.backends  # onnx.checker on the IR version and opset kdexport writes

ROOT = Path(__file__).resolve().parents[1]
DEPENDENCIES = {
    *("onnx", "onnxruntime", "onnxscript", "openvino", "nncf", "torch", "numpy"),
    *("transformers", "tokenizers", "huggingface_hub"),  # kdexport.modalities.text
    "soundfile",  # kdexport.modalities.speech
    "torch_pruning",  # kdexport.pruning
    "mlperf_loadgen",  # kdexport.serve
    *("torchvision", "timm", "safetensors"),  # kdexport.modalities.image.families
}


def _private_uses(tree: ast.AST) -> list[str]:
    """``dep._name`` and ``from dep... import _name`` where dep is a dependency (any alias)."""
    aliases, found = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in DEPENDENCIES:
                    aliases[a.asname or a.name.split(".")[0]] = a.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in DEPENDENCIES:
            for a in node.names:
                if a.name.startswith("_") or any(p.startswith("_") for p in node.module.split(".")):
                    found.append(f"from {node.module} import {a.name}")
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if node.attr.startswith("__") and node.attr.endswith("__"):
                continue  # __version__, __file__: public by convention
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                found.append(f"{aliases[base.id]}...{node.attr}")
    return found


def _sources() -> list[Path]:
    return sorted(p for d in ("kdexport", "tools", "tests") for p in (ROOT / d).rglob("*.py"))


def test_no_private_names_of_dependencies():
    found = {
        str(p.relative_to(ROOT)): uses
        for p in _sources()
        if (uses := _private_uses(ast.parse(p.read_text(encoding="utf-8"))))
    }
    assert found == {}


@pytest.mark.parametrize(
    "source",
    ["import onnx\nonnx._serialize(m)", "from onnx.external_data_helper import _get_all_tensors"],
)
def test_the_private_name_check_catches_what_broke_before(source):
    assert _private_uses(ast.parse(source))


def test_models_kdexport_builds_state_their_ir_version_and_opset():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    model = make_model(
        onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    )
    assert model.ir_version == IR_VERSION <= onnx.IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    onnx.checker.check_model(model, full_check=True)


def test_the_lowest_versions_tested_are_the_lower_bounds():
    """tools/lowest-versions.txt (what tools/test-lowest.sh installs) pins each lower bound of
    pyproject.toml exactly, so that the bounds stated are the versions the tests passed with."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    requirements = (
        project["dependencies"]
        + extras["cpu"]
        + extras["text"]
        + extras["speech"]
        + extras["prune"]
        + extras["serve"]
    )
    bounds = {
        m["name"]: Version(m["low"])
        for r in requirements
        if (m := re.fullmatch(r"(?P<name>[\w-]+)>=(?P<low>[\d.]+)", r))
    }
    pins = {}
    for line in (ROOT / "tools" / "lowest-versions.txt").read_text(encoding="utf-8").splitlines():
        if line := line.split("#")[0].strip():
            name, version = line.split("==")
            pins[name] = Version(version)
    assert pins, "tools/lowest-versions.txt pins nothing"
    assert {name: bounds.get(name) for name in pins} == pins
    assert {"numpy", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf"} <= set(pins)
