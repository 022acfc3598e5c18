"""Artifacts: a directory plus ``manifest.json``; stages hand over through disk.

A stage writes into a temporary sibling directory and renames it into place only after the
manifest (files with sha256, parent, parameters, checks) is written, so a directory that has a
manifest is complete, and an interrupted stage leaves the previous artifact untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from kdexport.errors import KdxError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256(path: Path) -> str:
    """The file's sha256, read in 1 MiB blocks. The device runner (``bundle/runner.py``) hashes
    the same way in its own copy: it must stay standalone, and this leaf must not import numpy
    (``kdexport status`` hashes every file; a test keeps the two digests equal)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``root`` (but its own manifest) -> sha256 and size, by relative path."""
    table = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p != root / MANIFEST and not p.name.startswith("."):
            table[p.relative_to(root).as_posix()] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    return table


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _umask_mode(mode: int) -> int:
    """``mode`` less the process umask: mkstemp and mkdtemp create owner-only entries."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_file(path: Path, mode: int | None = None) -> Iterator[IO[bytes]]:
    """A binary file that appears at ``path`` only when the block ends without an error: written
    as a temporary file in the same folder, then renamed. ``mode``: its permissions (default:
    0o666 less the umask, as ``open`` gives)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _umask_mode(0o666) if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Write bytes atomically: a temporary file in the same folder, then rename."""
    with atomic_file(path) as f:
        f.write(data)


def write_text(path: Path, text: str) -> None:
    """Write text atomically (temporary file + rename)."""
    write_bytes(path, text.encode("utf-8"))


def _safe_name(name: object) -> bool:
    """A relative path that stays inside its folder."""
    return (
        isinstance(name, str)
        and bool(name)
        and not Path(name).is_absolute()
        and ".." not in Path(name).parts
    )


def _check_shape(manifest: object, kind: str) -> None:
    """Raise ValueError unless ``manifest`` is a well-formed manifest of ``kind``."""
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        raise ValueError(f"not a '{kind}' manifest")
    if not isinstance(manifest.get("format_version", 0), int):
        raise ValueError("format_version is not an integer")
    files, parents = manifest.get("files", {}), manifest.get("parents", [])
    if not isinstance(files, dict) or not isinstance(parents, list):
        raise ValueError("files must be a table and parents a list")
    for name, entry in files.items():
        if (
            not _safe_name(name)
            or not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
        ):
            raise ValueError(f"bad file entry {name!r}")
    for parent in parents:
        if (
            not isinstance(parent, dict)
            or not _safe_name(parent.get("name"))
            or "/" in parent["name"]
        ):
            raise ValueError("bad parent entry")
        if not isinstance(parent.get("manifest_sha256"), str) or not isinstance(
            parent.get("kind"), str
        ):
            raise ValueError("bad parent entry")
    for key, tp in (("parameters", dict), ("checks", dict)):
        if not isinstance(manifest.get(key, {}), tp):
            raise ValueError(f"{key} must be a table")


def leftovers(path: Path) -> list[Path]:
    """Temporary directories that an interrupted write of ``path`` left behind."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []


class Artifact:
    """A complete artifact directory: its path and its manifest."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest

    @property
    def parameters(self) -> dict[str, Any]:
        return self.manifest["parameters"]

    @property
    def checks(self) -> dict[str, Any]:
        return self.manifest["checks"]

    def file(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def open(cls, path: Path, kind: str, hint: str) -> Artifact:
        """Open a complete artifact of ``kind`` and verify its checksums.

        ``hint`` is the command that makes it, for the error when it is missing or incomplete.
        """
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            state = (
                "was interrupted while being written"
                if leftovers(path)
                else "is missing or incomplete"
            )
            raise KdxError(f"{path} {state}; run `{hint}` first")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if isinstance(manifest, dict) and manifest.get("kind") != kind:
                raise KdxError(f"{path} is not a '{kind}' artifact; run `{hint}` to make one")
            _check_shape(manifest, kind)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise KdxError(
                f"{manifest_path}: unreadable manifest ({e}); run `{hint}` again"
            ) from None
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise KdxError(f"{path} was written by a newer kdexport; upgrade kdexport to read it")
        for name, entry in manifest.get("files", {}).items():
            p = path / name
            if not p.is_file() or sha256(p) != entry["sha256"]:
                raise KdxError(f"{p}: missing or changed since it was written; run `{hint}` again")
        for parent in manifest.get("parents", []):
            p = path.parent / parent["name"] / MANIFEST
            if not p.is_file() or sha256(p) != parent["manifest_sha256"]:
                raise KdxError(
                    f"{path} was made from an older {parent['kind']}; run `{hint}` again"
                )
        return cls(path, manifest)

    @classmethod
    @contextlib.contextmanager
    def create(
        cls, path: Path, kind: str, parameters: dict[str, Any], parents: list[Artifact] = ()
    ) -> Iterator[ArtifactWriter]:
        """Yield a writer over a temporary directory; on success rename it to ``path``.

        Any previous artifact at ``path`` stays as it was until the new one is complete.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in leftovers(path):  # an earlier run was killed while writing this artifact
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        tmp.chmod(_umask_mode(0o777))
        writer = ArtifactWriter(tmp, kind, parameters, parents)
        try:
            yield writer
            writer.finish()
            replace_dir(tmp, path)
            writer.artifact = cls(path, writer.manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class ArtifactWriter:
    """What a stage fills while it writes: files go under ``path``, figures into ``checks``."""

    def __init__(self, path: Path, kind: str, parameters: dict[str, Any], parents):
        self.path = path
        self.checks: dict[str, Any] = {}
        self.manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "parameters": parameters,
            "parents": [
                {
                    "kind": p.manifest["kind"],
                    "name": p.path.name,
                    "manifest_sha256": sha256(p.path / MANIFEST),
                }
                for p in parents
            ],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.artifact: Artifact | None = None

    def finish(self) -> None:
        self.manifest["checks"] = self.checks
        self.manifest["files"] = file_table(self.path)
        write_json(self.path / MANIFEST, self.manifest)


def replace_dir(new: Path, dest: Path) -> None:
    """Move ``new`` to ``dest``, replacing an existing directory with only renames."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dest)
