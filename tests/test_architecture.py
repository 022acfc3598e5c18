"""The package's shape: no import circle, no private name imported across modules, the
commands that only read JSON import no torch, no more layer breaks and modality branches than
today (tools/check_architecture.py measures the same)."""

import importlib.util
import re
import sys
import textwrap
from pathlib import Path

import pytest

# Today's figures. The modalities refactor lowers them, to 0 in the end: set each to what
# `python tools/check_architecture.py --static` prints once a change removes some, never higher.
MAX_LAYER_BREAKS = 0
MAX_MODALITY_BRANCHES = 0

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


def test_layer_breaks_and_modality_branches_stay_under_their_ceilings():
    figures = arch.static_figures()
    breaks, branches = figures["layer_breaks"], figures["modality_branches"]
    assert len(breaks) <= MAX_LAYER_BREAKS, "layer breaks (tools/layers.toml):\n" + "\n".join(
        breaks
    )
    assert figures["modality_branches_outside_modalities"] == len(branches)
    assert len(branches) <= MAX_MODALITY_BRANCHES, (
        "modality branches outside the modality packages (ask the run's recorded modality):\n"
        + "\n".join(branches)
    )


def test_every_module_is_in_exactly_one_layer_and_the_runner_imports_nothing():
    where, problems = arch.assign_layers(arch.modules(), arch.load_layers())
    assert problems == []
    assert where["kdexport.bundle.runner"][0] == "runner"
    graph, _ = arch.imports(arch.modules())
    assert graph["kdexport.bundle.runner"] == set()  # it ships alone as run.py


def test_the_docs_table_of_layers_is_rendered_from_layers_toml():
    docs = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = arch.layers_table(arch.load_layers())
    block = re.search(r"<!-- layers:.*?-->\n(.*?)\n<!-- end layers -->", docs, re.S)
    assert block, "docs/architecture.md: the table of layers has lost its markers"
    assert block.group(1) == table, (
        "docs/architecture.md disagrees with tools/layers.toml: paste in the output of "
        "`python tools/check_architecture.py --layers-table`"
    )


def test_modalities_are_the_registrys_keys():
    registry = ROOT / "kdexport" / "modalities" / "__init__.py"
    if not registry.is_file():
        assert arch.static_figures()["modalities"] == []
        pytest.skip("no kdexport/modalities/__init__.py yet")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from kdexport.modalities import MODALITIES

    assert arch.registry_keys(registry) == sorted(MODALITIES)


def test_registry_keys_are_read_without_importing(tmp_path):
    registry = tmp_path / "__init__.py"
    assert arch.registry_keys(registry) == []
    registry.write_text("import torch\nMODALITIES = {'text': T, 'image': I, 'speech': S}\n")
    assert arch.registry_keys(registry) == ["image", "speech", "text"]
    registry.write_text("MODALITIES: dict[str, object] = dict(text=T, image=I)\n")
    assert arch.registry_keys(registry) == ["image", "text"]
    registry.write_text("OTHER = {'text': 1}\n")
    assert arch.registry_keys(registry) == []


def _branches(source: str, **kw) -> list[str]:
    return [what for _, what in arch.branches_in(textwrap.dedent(source), **kw)]


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ("if is_packed(x): pass", "call"),
        ("y = tokens.is_text_spec(spec)", "call"),
        ("transformer = for_tokens(calibration)", "call"),
        ('if hasattr(model, "hf"): pass', "hasattr"),
        ('ctx = tap.paused() if hasattr(tap, "paused") else None', "hasattr"),
        ("if loss.inputs in TEXT_INPUTS: pass", "constant"),
        ("ok = spec.startswith(TEXT_SPECS)", "constant"),
        ('ok = not spec.startswith(("zoo:", *TEXT_SPECS))', "constant"),
        ("if suffix not in losses.TEXT_SUFFIXES: pass", "constant"),
        ('return isinstance(c, dict) and "input_ids" in c', "key"),
        ('at = key if "x" in key else f"b={key}"', "key"),
        ('if preprocessing["kind"] == "text": pass', "name"),
        ('if recorded.get("kind") == "text": pass', "name"),
        ('if modality != "speech": pass', "name"),
        ('if "image" in kinds: pass', "name"),
        ('text = bundle.manifest["text"]', "name"),
        ('is_text = isinstance(bundle.manifest.get("text"), dict)', "name"),
        ('if teacher.startswith("hf:"): pass', "scheme"),
        ('if s.startswith(("hf-student:", "hf-config:")): pass', "scheme"),
        ('if data["text_column"]: pass', "set"),
        ("if not opts.text_column: pass", "set"),
        ('tok = t if data.get("text_column") else None', "set"),
        ("from kdexport.text.tokens import feed", "import"),
        ("import kdexport.text", "import"),
        ("from kdexport import text", "import"),
        ("from kdexport.modalities import text", "import"),
        ("from kdexport.modalities.image import transforms", "import"),
        ("def f():\n    from .text.tokens import unpack", "import"),
    ],
)
def test_each_form_of_modality_branch_is_detected(source, rule):
    found = _branches(source)
    assert len(found) == 1 and found[0].startswith(f"{rule}: "), found


@pytest.mark.parametrize(
    "source",
    [
        "modality_of(run).export(model, path)",  # asked through the registry
        "from kdexport.modalities import MODALITIES, modality_of",
        "m = MODALITIES[run.modality]",
        'manifest["text"] = section',  # recording a section is not asking about one
        'pre = {"kind": "text", "text_column": column}',  # nor is recording the modality
        "texts = load(column=data_opts['text_column'])",  # using the option, not testing it
        'if name.startswith("model."): pass',
        'if ".py:" not in spec: pass',
        "if TYPE_CHECKING:\n    from kdexport.text.features import TextTap",
        "def is_packed(x):\n    return x.ndim == 3",  # defining the predicate is no branch
    ],
)
def test_asking_the_registry_is_not_a_modality_branch(source):
    assert _branches(source) == []


def test_one_place_is_counted_once():
    source = 'if data["text_column"] and teacher.startswith("hf:") and is_packed(x): pass\n'
    assert len(arch.branches_in(source)) == 1


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, source in files.items():
        path = tmp_path / "kdexport" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    paths = sorted((tmp_path / "kdexport").rglob("*.py"))
    names = [".".join(p.relative_to(tmp_path).with_suffix("").parts) for p in paths]
    return {n.removesuffix(".__init__"): p for n, p in zip(names, paths, strict=True)}


LAYERS = {
    "layer": [
        {
            "name": "stages",
            "modules": ["kdexport/teacher.py", "kdexport/distill.py"],
            "may_import": ["supporting", "modalities", "leaves"],
            "within": "earlier",
        },
        {
            "name": "supporting",
            "modules": [
                "kdexport/train/**",
                "kdexport/backends/**",
                "kdexport/data.py",
                "kdexport/onnxfile.py",
            ],
            "may_import": ["leaves"],
            "within": "any",
        },
        {
            "name": "modalities",
            "modules": ["kdexport/modalities/**", "kdexport/text/**"],
            "may_import": ["supporting", "leaves"],
            "within": "any",
        },
        {
            "name": "leaves",
            "modules": ["kdexport/__init__.py", "kdexport/rundir.py"],
            "may_import": [],
            "within": "any",
        },
    ],
    "forbid": [
        {"importer": ["kdexport/train/**"], "imported": ["kdexport/backends/**"], "why": "test"}
    ],
}


def test_layer_breaks_on_a_small_package(tmp_path):
    known = _package(
        tmp_path,
        {
            "__init__.py": "",
            "rundir.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from kdexport.data import Splits  # never runs: no break
                def load():
                    from kdexport.data import load_splits  # lazy: a break
            """,
            "data.py": "from kdexport import rundir\n",
            "onnxfile.py": "from kdexport.text.tokens import feed\n",
            "text/__init__.py": "",
            "text/tokens.py": "from kdexport.data import x\n",  # modalities -> supporting
            "teacher.py": "from kdexport.distill import student\n",  # a later stage
            "distill.py": "from kdexport.teacher import load_teacher\n",  # an earlier one
            "train/__init__.py": "",
            "train/loop.py": "from kdexport.backends import ort\n",
            "backends/__init__.py": "",
            "backends/ort.py": "from kdexport import data\n",
        },
    )
    breaks = arch.layer_breaks(known, LAYERS, root=tmp_path)
    assert breaks == [
        "kdexport.onnxfile imports kdexport.text.tokens "
        "(layer supporting may not import layer modalities)",
        "kdexport.rundir imports kdexport.data (layer leaves may not import layer supporting)",
        "kdexport.teacher imports kdexport.distill "
        "(layer stages may not import layer stages (a later stage))",
        "kdexport.train.loop imports kdexport.backends.ort (layer supporting may not import "
        "layer supporting here: kdexport/train/** may not import kdexport/backends/**)",
    ]


def test_a_module_in_no_layer_is_a_break(tmp_path):
    known = _package(tmp_path, {"__init__.py": "", "newcomer.py": ""})
    assert arch.layer_breaks(known, LAYERS, root=tmp_path) == [
        "kdexport/newcomer.py is in no layer: list it in exactly one layer of layers.toml"
    ]


def test_modality_packages_are_not_counted_and_the_rest_is(tmp_path):
    known = _package(
        tmp_path,
        {
            "__init__.py": "",
            "modalities/__init__.py": "MODALITIES = {'text': 1, 'audio': 2}\n",
            "modalities/text/__init__.py": 'def f(kind):\n    return kind == "text"\n',
            "text/__init__.py": "def f(x):\n    return is_packed(x)\n",
            "data.py": 'import kdexport.modalities.audio\nif kind == "audio": pass\n',
        },
    )
    found = arch.modality_branches(known, LAYERS, root=tmp_path)
    assert [f.split(": ")[0] for f in found] == ["kdexport/data.py:1", "kdexport/data.py:2"]
