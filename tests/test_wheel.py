"""The wheel carries the target profiles and recipes, beside the code as in the source tree."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "kdexport")


def test_wheel_ships_profiles_and_recipes(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    skip = shutil.ignore_patterns("__pycache__")
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=skip)
        else:
            shutil.copy(ROOT / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*cmd, "-w", str(tmp_path), str(src)], check=True, capture_output=True, timeout=300
    )
    (wheel,) = tmp_path.glob("kdexport-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = {str(p.relative_to(ROOT)) for p in (ROOT / "kdexport").glob("*/*.toml")}
    assert {"kdexport/targets/ort-cpu.toml", "kdexport/recipes/digits.toml"} <= data <= names
    assert not any(n.startswith("tests/") for n in names)
