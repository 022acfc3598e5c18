#!/usr/bin/env python3
"""The package's shape, measured: modules, import circles, private names imported across
modules, layer breaks, modality branches, whether the commands that only read JSON import torch,
and the README's length.

    .venv/bin/python tools/check_architecture.py [--run RUN] [--static] [--layers-table]

Imports are read from the source (every ``import``, at module level or inside a function, since
a lazy import is a dependency too). A circle is a strongly connected group of two or more
modules. ``kdexport status RUN`` is timed against ``kdexport --help`` in alternating rounds (the
median of the per-round ratios); without ``--run`` a tiny run is made first; ``--static`` skips
that and the torch checks (only what the source says). The last line is one JSON object.

Layers: tools/layers.toml says which layer each module is in and which layers each may import
(docs/architecture.md's table is rendered from it: ``--layers-table``). ``layer_breaks`` lists
each pair of modules "A imports B (layer X may not import layer Y)", and each module that no
layer, or more than one, lists. Imports under ``if TYPE_CHECKING:`` never run and do not count.

Modality branches (``modality_branches_outside_modalities``; the places in
``modality_branches`` as "file:line: rule: code"): places outside the modality packages (the
"modalities" layer of tools/layers.toml: kdexport/modalities/**, and kdexport/text/** until it
moves there) that ask "is this text / image / speech?" by sniffing a value, instead of asking
the run's recorded modality through the registry (``MODALITIES[run.modality]``,
``modality_of(run).export(...)``). bundle/runner.py counts too, except its modality table (the
lines between ``# --- inputs:`` and ``# --- end inputs``: one input reader per modality, keyed
by the bundle's recorded modality), which is the modalities' own code. A place is one source line, counted once whatever rules match on it.
The rules, on the AST:

  call      a call of a sniffing predicate in SNIFF_CALLS (``is_packed(x)``, ``q.for_tokens(c)``)
  hasattr   ``hasattr(X, "hf")``, ``getattr(X, "paused", None)``: an attribute in SNIFF_ATTRS
  constant  ``x in TEXT_INPUTS``, ``s.startswith(TEXT_SPECS)``: a constant named after a
            modality (TEXT_*, IMAGE_*, SPEECH_*) in a membership test or a startswith
  key       ``"input_ids" in X``, ``"x" in size`` (a "BxS" text shape): a membership test of a
            key in SNIFF_KEYS
  name      any comparison (==, !=, in, not in) with a modality's name as a string literal
            (``preprocessing["kind"] == "text"``, ``recorded.get("kind") == "text"``), and
            reading a section or key of that name: ``manifest["text"]``, ``m.get("text")``.
            Writing one (``manifest["text"] = ...``, ``{"kind": "text"}``) records the modality:
            not counted. The names: image, text, speech and the registry's keys. A value read
            from the run's record and handed to the registry is never compared with a literal.
  scheme    ``spec.startswith("hf:")``: startswith of a model-spec scheme ("name:"), alone or in
            a tuple (the schemes belong in one registry that modalities add to)
  set       a test whether an option only one modality has (SET_TESTS) is set:
            ``if data["text_column"]``, ``if not opts.text_column``: the option inside the test
            of an if, while, assert, conditional expression, boolean operator or ``not`` (using
            its value, ``load(column=d["text_column"])``, is not a test)
  import    an import of one modality's package (kdexport.text, kdexport.modalities.<name>),
            one per statement; kdexport.modalities itself (the registry) is not one

Not counted: calls of a modality's own helpers (``_text_column(...)``, ``text_shapes(...)``):
they run after a counted branch has decided; shape tests (``len(shape) == 4``), which cannot be
told from other shape checks. Under ``if TYPE_CHECKING:`` nothing counts, imports included.
``modalities``: the keys of ``MODALITIES`` in kdexport/modalities/__init__.py, read with ast (no
import, no torch); [] while there is none.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kdexport"
LAYERS = Path(__file__).resolve().with_name("layers.toml")  # the layers, as data
# Commands that read JSON (and, for verify and targets, may run a model or a provider probe):
# none of them may import torch.
JSON_COMMANDS = ("status", "compare", "import-results", "verify", "targets")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, importer: str, level: int, known: dict) -> str | None:
    if level:  # relative import: from the importer's package
        base = importer.split(".")
        package = base if known[importer].name == "__init__.py" else base[:-1]
        name = ".".join([*package[: len(package) - level + 1], *([name] if name else [])])
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.AST, mod: str, known: dict) -> list[tuple[str, str | None]]:
    """The kdexport modules an import statement imports, each with the name it imports."""
    if isinstance(node, ast.Import):
        targets = [(a.name, None) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        targets = [(f"{base}.{a.name}" if base else a.name, a.name) for a in node.names]
        if node.level == 0 and not base.startswith("kdexport"):
            return []
    else:
        return []
    out = []
    for full, alias in targets:
        level = getattr(node, "level", 0)
        if not level and not full.startswith("kdexport"):
            continue
        target = _resolve(full, mod, level, known)
        if target is not None and target != mod:
            out.append((target, alias))
    return out


def imports(known: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    """module -> the kdexport modules it imports; and every private name imported across modules."""
    graph, private = {m: set() for m in known}, []
    for mod, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            for target, alias in _targets(node, mod, known):
                graph[mod].add(target)
                if alias and alias.startswith("_") and not alias.startswith("__"):
                    private.append(f"{mod} imports {target}.{alias}")
    for mod, path in known.items():  # module._name used across modules
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdexport"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if full in known:
                        aliases[a.asname or a.name] = full
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in known and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and aliases[node.value.id] != mod
            ):
                private.append(f"{mod} uses {aliases[node.value.id]}.{node.attr}")
    return graph, sorted(set(private))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan's algorithm)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# --- layers (tools/layers.toml) ------------------------------------------------------------


def load_layers(path: Path = LAYERS) -> dict:
    """tools/layers.toml: ``{"layer": [...], "forbid": [...]}``."""
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _glob(pattern: str) -> re.Pattern:
    """A path glob: ``**`` any number of folders (and files in them), ``*`` within one name."""
    out = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace("\0", ".*")
    return re.compile(out + r"\Z")


def _rel(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def matching(rel: str, patterns: list[str]) -> int | None:
    """The index of the first of ``patterns`` that ``rel`` (a path from the root) matches."""
    return next((i for i, p in enumerate(patterns) if _glob(p).match(rel)), None)


def assign_layers(
    known: dict[str, Path], layers: dict, root: Path = ROOT
) -> tuple[dict[str, tuple[str, int]], list[str]]:
    """module -> (its layer, the index of its pattern); and the modules in no layer or in two."""
    where, problems = {}, []
    for mod, path in known.items():
        rel = _rel(path, root)
        hits = [
            (la["name"], i)
            for la in layers["layer"]
            if (i := matching(rel, la["modules"])) is not None
        ]
        if len(hits) == 1:
            where[mod] = hits[0]
        else:
            names = ", ".join(h[0] for h in hits) or "no layer"
            problems.append(f"{rel} is in {names}: list it in exactly one layer of {LAYERS.name}")
    return where, problems


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (they never run: no dependency at run time)."""
    out = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and (
            (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        ):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def import_edges(tree: ast.AST, mod: str, known: dict) -> list[tuple[str, int]]:
    """(imported module, line) of each import that runs: lazy ones too, not TYPE_CHECKING ones."""
    skip = _type_checking_only(tree)
    return [
        (target, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skip
        for target, _ in _targets(node, mod, known)
    ]


def _allowed(a: tuple[str, int], b: tuple[str, int], layers: dict) -> bool:
    layer = next(la for la in layers["layer"] if la["name"] == a[0])
    if a[0] == b[0]:
        within = layer.get("within", "none")
        return within == "any" or (within == "earlier" and b[1] < a[1])
    return "*" in layer["may_import"] or b[0] in layer["may_import"]


def layer_breaks(known: dict[str, Path], layers: dict, root: Path = ROOT) -> list[str]:
    """ "A imports B (layer X may not import layer Y)", one per pair of modules; a module in no
    layer or in two is a break too (the table must place every module)."""
    where, out = assign_layers(known, layers, root)
    rel = {m: _rel(p, root) for m, p in known.items()}
    for mod, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for target, _ in import_edges(tree, mod, known):
            a, b = where.get(mod), where.get(target)
            if a is None or b is None:
                continue
            why = None
            if not _allowed(a, b, layers):
                order = " (a later stage)" if a[0] == b[0] == "stages" else ""
                why = f"layer {a[0]} may not import layer {b[0]}{order}"
            for rule in layers.get("forbid", []):
                if matching(rel[mod], rule["importer"]) is not None and (
                    matching(rel[target], rule["imported"]) is not None
                ):
                    why = (
                        f"layer {a[0]} may not import layer {b[0]} here: "
                        f"{', '.join(rule['importer'])} may not import "
                        f"{', '.join(rule['imported'])}"
                    )
            if why:
                out.append(f"{mod} imports {target} ({why})")
    return sorted(set(out))


def _md_paths(patterns: list[str]) -> str:
    def one(p: str) -> str:
        p = p.removeprefix("kdexport/")
        return f"`{p.removesuffix('**')}`" if p.endswith("/**") else f"`{p}`"

    return ", ".join(one(p) for p in patterns)


def layers_table(layers: dict) -> str:
    """The docs' table of layers (docs/architecture.md), rendered from tools/layers.toml."""
    rows = ["| layer | modules | may import |", "|---|---|---|"]
    for la in layers["layer"]:
        within = la.get("within", "none")
        own = {"any": [la["name"]], "earlier": [f"earlier {la['name']}"]}.get(within, [])
        names = ["any layer"] if "*" in la["may_import"] else own + la["may_import"]
        may = ", ".join(names) or "nothing from kdexport"
        if la.get("note"):
            may += f"; {la['note']}"
        rows.append(f"| {la['name']} | {_md_paths(la['modules'])} | {may} |")
    for rule in layers.get("forbid", []):
        rows.append("")
        rows.append(
            f"Not allowed all the same: {_md_paths(rule['importer'])} importing "
            f"{_md_paths(rule['imported'])} ({rule['why']})."
        )
    return "\n".join(rows)


# --- modality branches (the rules: the module docstring) ------------------------------
MODALITY_NAMES = ("image", "text", "speech")
SNIFF_CALLS = {"is_packed", "is_text_spec", "for_tokens"}
SNIFF_ATTRS = {"hf", "paused"}
SNIFF_KEYS = {"input_ids", "x"}
SET_TESTS = {"text_column"}
SCHEME = re.compile(r"[a-z][a-z0-9-]*:\Z")


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def _literal(node: ast.AST) -> str | None:
    ok = isinstance(node, ast.Constant) and isinstance(node.value, str)
    return node.value if ok else None


def _modality_import(full: str, names: tuple[str, ...]) -> bool:
    parts = full.split(".")
    return parts[:2] == ["kdexport", "text"] or (
        parts[:2] == ["kdexport", "modalities"] and len(parts) > 2 and parts[2] in names
    )


def _import_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
    return [base, *(f"{base}.{a.name}" for a in node.names)]


def _tests(tree: ast.AST) -> list[ast.AST]:
    """The expressions whose truth a branch turns on."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If | ast.While | ast.IfExp | ast.Assert):
            out.append(node.test)
        elif isinstance(node, ast.comprehension):
            out += node.ifs
        elif isinstance(node, ast.BoolOp):
            out += node.values
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            out.append(node.operand)
    return out


def branches_in(
    source: str, module: str = "kdexport.core", is_package: bool = False, names=MODALITY_NAMES
) -> list[tuple[int, str]]:
    """(line, what) of each modality branch in one module's source, by the rules above."""
    tree = ast.parse(source)
    skip = _type_checking_only(tree)
    constant = re.compile(rf"({'|'.join(n.upper() for n in names)})_\w+\Z")
    found: dict[int, list[str]] = {}

    def hit(node: ast.AST, rule: str) -> None:
        if id(node) not in skip:
            what = f"{rule}: {ast.unparse(node)}"
            found.setdefault(node.lineno, []).append(what[:90])

    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            if any(_modality_import(n, names) for n in _import_names(node, module, is_package)):
                hit(node, "import")
        elif isinstance(node, ast.Call):
            fn, args = _name(node.func), node.args
            first = _literal(args[0]) if args else None
            if fn in SNIFF_CALLS:
                hit(node, "call")
            elif (
                fn in ("hasattr", "getattr") and len(args) > 1 and _literal(args[1]) in SNIFF_ATTRS
            ):
                hit(node, "hasattr")
            elif fn == "startswith" and args:
                arg = args[0]
                parts = arg.elts if isinstance(arg, ast.Tuple) else [arg]
                parts = [p.value if isinstance(p, ast.Starred) else p for p in parts]
                if any(constant.match(_name(p) or "") for p in parts):
                    hit(node, "constant")
                elif any(SCHEME.match(_literal(p) or "") for p in parts):
                    hit(node, "scheme")
            elif fn in ("get", "pop") and isinstance(node.func, ast.Attribute) and first in names:
                hit(node, "name")
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            member = any(isinstance(op, ast.In | ast.NotIn) for op in node.ops)
            if any(_literal(o) in names for o in operands):
                hit(node, "name")
            elif member and any(constant.match(_name(o) or "") for o in node.comparators):
                hit(node, "constant")
            elif member and _literal(node.left) in SNIFF_KEYS:
                hit(node, "key")
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and _literal(node.slice) in names
        ):
            hit(node, "name")
    for test in _tests(tree):
        for node in ast.walk(test):
            key = None
            if isinstance(node, ast.Subscript):
                key = _literal(node.slice)
            elif isinstance(node, ast.Name | ast.Attribute):
                key = _name(node)
            elif isinstance(node, ast.Call) and _name(node.func) == "get" and node.args:
                key = _literal(node.args[0])
            if key in SET_TESTS:
                hit(node, "set")
                break
    return sorted((line, "; ".join(dict.fromkeys(w))) for line, w in found.items())


def registry_keys(path: Path = PACKAGE / "modalities" / "__init__.py") -> list[str]:
    """The sorted keys of ``MODALITIES = {...}`` in the registry's source, read with ast (no
    import, so no torch); [] when the file or the dict is not there."""
    if not path.is_file():
        return []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if not any(isinstance(t, ast.Name) and t.id == "MODALITIES" for t in target):
            continue
        value = node.value
        if isinstance(value, ast.Dict):
            return sorted(k.value for k in value.keys if _literal(k) is not None)
        if isinstance(value, ast.Call) and _name(value.func) == "dict":
            return sorted(k.arg for k in value.keywords if k.arg)
    return []


# run.py's modality table: the lines between these markers hold one input reader per modality
# (``INPUTS``); a modality's own code there is inside its modality, as in its package.
TABLE_START, TABLE_END = "# --- inputs:", "# --- end inputs"


def modality_table(source: str) -> range:
    """The lines (1-based) of run.py's modality table; empty when it has none."""
    lines = source.splitlines()
    starts = [i for i, line in enumerate(lines, 1) if line.startswith(TABLE_START)]
    ends = [i for i, line in enumerate(lines, 1) if line.startswith(TABLE_END)]
    return range(starts[0], ends[0] + 1) if starts and ends else range(0)


def modality_branches(known: dict[str, Path], layers: dict, root: Path = ROOT) -> list[str]:
    """ "file:line: what" for each modality branch outside the modalities layer (and outside
    run.py's modality table)."""
    where, _ = assign_layers(known, layers, root)
    registry = registry_keys(root / "kdexport" / "modalities" / "__init__.py")
    names = tuple(dict.fromkeys([*MODALITY_NAMES, *registry]))
    out = []
    for mod, path in known.items():
        if where.get(mod, ("",))[0] == "modalities":
            continue
        source = path.read_text(encoding="utf-8")
        table = modality_table(source) if where.get(mod, ("",))[0] == "runner" else range(0)
        for line, what in branches_in(source, mod, path.name == "__init__.py", names):
            if line not in table:
                out.append(f"{_rel(path, root)}:{line}: {what}")
    return out


def static_figures() -> dict:
    """What the source alone says: layer breaks, modality branches, the registry's keys."""
    known, layers = modules(), load_layers()
    branches = modality_branches(known, layers)
    return {
        "layer_breaks": layer_breaks(known, layers),
        "modality_branches_outside_modalities": len(branches),
        "modality_branches": branches,
        "modalities": registry_keys(),
    }


def imported_heavy(command: list[str]) -> dict[str, bool]:
    """Run one CLI command in a fresh interpreter; which heavy packages it imported."""
    code = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from kdexport.cli import cli\n"
        f"CliRunner().invoke(cli, {command!r})\n"
        "print(json.dumps({m: m in sys.modules for m in ('torch', 'onnxruntime', 'openvino')}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "kdexport.cli", *args], cwd=ROOT, capture_output=True, timeout=300
    )
    return time.perf_counter() - t0


def status_vs_help(run: Path, rounds: int = 7) -> dict:
    """Wall time of ``kdexport status RUN`` over ``kdexport --help``, alternating, per round."""
    ratios, status, helps = [], [], []
    for _ in range(rounds):
        h, s = _timed(["--help"]), _timed(["status", str(run)])
        helps.append(h)
        status.append(s)
        ratios.append(s / h)
    return {
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "status_s_median": statistics.median(status),
        "help_s_median": statistics.median(helps),
        "rounds": rounds,
    }


def tiny_run(folder: Path) -> tuple[Path | None, str]:
    """A short complete run to time ``kdexport status`` on; (None, why) when it cannot be made."""
    run = folder / "run"
    fast = ["teacher.epochs=1", "distill.epochs=1", "benchmark.memory=false"]
    fast += ["benchmark.min_iters=5", "benchmark.min_time_s=0.0", "benchmark.rounds=1"]
    fast += ["benchmark.repeats=1", "benchmark.warmup_iters=1", "benchmark.warmup_s=0.0"]
    fast += ['compile.targets=["ort-cpu"]', "benchmark.batch_sizes=[1]"]
    args = ["distill-and-export", "--out", str(run), *[a for f in fast for a in ("--set", f)]]
    done = subprocess.run(
        [sys.executable, "-m", "kdexport.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return None, f"making a run with {sys.executable} failed ({last})"
    return run, ""


def runtime_figures(run_dir: Path | None) -> tuple[dict, list[str]]:
    """Whether the JSON commands import torch, and ``status`` over ``--help``; what went
    unmeasured."""
    # Without torch in this Python, "imports no torch" would hold trivially: not measured then.
    has_torch = importlib.util.find_spec("torch") is not None
    unmeasured = []
    with tempfile.TemporaryDirectory() as tmp:
        run, why = (run_dir, "") if run_dir else tiny_run(Path(tmp))
        some_dir = str(run or tmp)  # the imports happen whether or not the folder is a run
        heavy = {
            "status": imported_heavy(["status", some_dir]),
            "compare": imported_heavy(["compare", some_dir, some_dir]),
            "import-results": imported_heavy(["import-results", str(Path(tmp) / "none.json")]),
            "verify": imported_heavy(["verify", str(Path(tmp) / "none")]),
            "targets": imported_heavy(["targets"]),
        }
        timing = status_vs_help(run) if run else None
    for command, mods in heavy.items():
        print(f"{command:<15} imports " + (", ".join(m for m, v in mods.items() if v) or "none"))
    if not has_torch:
        unmeasured.append(f"json_commands_import_torch: {sys.executable} has no torch to import")
    if timing:
        print(
            f"status / --help: {timing['ratio_median']:.2f}x (median of {timing['rounds']} rounds; "
            f"{timing['status_s_median']:.2f} s vs {timing['help_s_median']:.2f} s)"
        )
    else:
        unmeasured.append(f"status_over_help: {why}; pass --run RUN or use .venv/bin/python")
    figures = {
        "json_commands_import_torch": any(m["torch"] for m in heavy.values())
        if has_torch
        else None,
        "status_over_help": round(timing["ratio_median"], 2) if timing else None,
    }
    return figures, unmeasured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a complete run directory (default: make one)")
    parser.add_argument(
        "--static", action="store_true", help="only what the source says (no run, no timing)"
    )
    parser.add_argument(
        "--layers-table",
        action="store_true",
        help="print docs/architecture.md's table of layers, rendered from tools/layers.toml",
    )
    args = parser.parse_args()
    if args.layers_table:
        print(layers_table(load_layers()))
        return 0
    known = modules()
    graph, private = imports(known)
    found = circles(graph)
    for group in found:
        print("circle:", " -> ".join(group))
    for line in private:
        print("private import:", line)
    static = static_figures()
    for line in static["layer_breaks"]:
        print("layer break:", line)
    for line in static["modality_branches"]:
        print("modality branch:", line)
    print(f"modality branches outside the modality packages: {len(static['modality_branches'])}")
    runtime, unmeasured = ({}, []) if args.static else runtime_figures(args.run)
    for line in unmeasured:
        print("not measured:", line)
    readme = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    result = {
        "modules": len(known),
        "circles": len(found),
        "private_cross_imports": len(private),
        **({} if args.static else {"json_commands_import_torch": None}),
        "readme_lines": readme,
        **runtime,
        **static,
    }
    print(json.dumps(result))
    return 1 if unmeasured else 0


if __name__ == "__main__":
    sys.exit(main())
