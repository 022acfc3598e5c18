"""Run the conformance corpus through `kdexport benchmark` (quick settings) on ort-cpu and
openvino-cpu, and `kdexport package` (then the bundle's `run.py verify`) where it ran on ort-cpu.

    .venv/bin/python tools/check_conformance.py

The corpus is tests/conformance/corpus.py's (the tests use the same list): each file must run,
or be refused in one line holding the text the corpus expects. Prints one line per file and
target and, last, one JSON object: {"models": N, "ran": {target: n}, "refused_cleanly": n,
"packaged": n, "failed": [...]}. Exit status 1 if anything failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from click.testing import CliRunner
from conformance.corpus import TARGETS, cases

from kdexport.cli import cli


def check(case, target: str, path: Path) -> tuple[str, str]:
    """'ran', 'refused' or 'failed', and the line that says so."""
    args = ["benchmark", str(path), "--target", target, "--quick", *case.args]
    result = CliRunner().invoke(cli, args)
    lines = (result.stdout if result.exit_code == 0 else result.stderr).strip().splitlines()
    last = lines[-1] if lines else f"exit {result.exit_code}, no output"
    expected = case.refused.get(target)
    if result.exit_code == 0 and expected is None:
        return "ran", last
    errors = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("error: ")]
    clean = result.exit_code == 1 and errors == [last] and "unexpected" not in last
    if clean and expected is not None and expected in last:
        return "refused", last
    return "failed", last


def package(case, path: Path) -> tuple[str, str]:
    """'packaged' or 'failed': `kdexport package FILE --dir`, then the bundle's run.py verify in
    another Python process."""
    bundle = path.parent / "bundle"
    result = CliRunner().invoke(cli, ["package", str(path), "--dir", str(bundle), *case.args])
    if result.exit_code != 0:
        return "failed", (result.stderr.strip().splitlines() or [f"exit {result.exit_code}"])[-1]
    r = subprocess.run(
        [sys.executable, str(bundle / "run.py"), "verify"], capture_output=True, text=True
    )
    if r.returncode != 0:
        return "failed", (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
    return "packaged", next(ln for ln in r.stdout.splitlines() if "golden output ok" in ln)


def main() -> int:
    ran = dict.fromkeys(TARGETS, 0)
    refused, packaged, failed, corpus = 0, 0, [], cases()
    for case in corpus:
        with tempfile.TemporaryDirectory() as tmp:
            path = case.build(Path(tmp))
            for target in TARGETS:
                outcome, line = check(case, target, path)
                print(f"{case.name} {target}: {outcome}: {line}", flush=True)
                if outcome == "ran":
                    ran[target] += 1
                elif outcome == "refused":
                    refused += 1
                else:
                    failed.append(f"{case.name} {target}: {line}")
                if target == "ort-cpu" and outcome == "ran":
                    outcome, line = package(case, path)
                    print(f"{case.name} package: {outcome}: {line}", flush=True)
                    packaged += outcome == "packaged"
                    if outcome == "failed":
                        failed.append(f"{case.name} package: {line}")
    print(
        json.dumps(
            {
                "models": len(corpus),
                "ran": ran,
                "refused_cleanly": refused,
                "packaged": packaged,
                "failed": failed,
            }
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
