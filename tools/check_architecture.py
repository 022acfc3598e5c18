#!/usr/bin/env python3
"""The package's shape, measured: modules, import circles, private names imported across
modules, whether the commands that only read JSON import torch, and the README's length.

    .venv/bin/python tools/check_architecture.py [--run RUN]

Imports are read from the source (every ``import``, at module level or inside a function, since
a lazy import is a dependency too). A circle is a strongly connected group of two or more
modules. ``kdexport status RUN`` is timed against ``kdexport --help`` in alternating rounds (the
median of the per-round ratios); without ``--run`` a tiny run is made first. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kdexport"
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


def imports(known: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    """module -> the kdexport modules it imports; and every private name imported across modules."""
    graph, private = {m: set() for m in known}, []
    for mod, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                targets = [(f"{base}.{a.name}" if base else a.name, a.name) for a in node.names]
                if node.level == 0 and not base.startswith("kdexport"):
                    continue
            else:
                continue
            for full, alias in targets:
                level = getattr(node, "level", 0)
                if not level and not full.startswith("kdexport"):
                    continue
                target = _resolve(full, mod, level, known)
                if target is None or target == mod:
                    continue
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a complete run directory (default: make one)")
    args = parser.parse_args()
    known = modules()
    graph, private = imports(known)
    found = circles(graph)
    for group in found:
        print("circle:", " -> ".join(group))
    for line in private:
        print("private import:", line)
    # Without torch in this Python, "imports no torch" would hold trivially: not measured then.
    has_torch = importlib.util.find_spec("torch") is not None
    unmeasured = []
    with tempfile.TemporaryDirectory() as tmp:
        run, why = (args.run, "") if args.run else tiny_run(Path(tmp))
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
    for line in unmeasured:
        print("not measured:", line)
    readme = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    result = {
        "modules": len(known),
        "circles": len(found),
        "private_cross_imports": len(private),
        "json_commands_import_torch": any(m["torch"] for m in heavy.values())
        if has_torch
        else None,
        "readme_lines": readme,
        "status_over_help": round(timing["ratio_median"], 2) if timing else None,
    }
    print(json.dumps(result))
    return 1 if unmeasured else 0


if __name__ == "__main__":
    sys.exit(main())
