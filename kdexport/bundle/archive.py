"""Bundle archives: a reproducible ``.tar.gz`` of a bundle folder, unpacked defensively, and
``kdexport verify`` of an archive or a folder.

Archives are read defensively: members with absolute paths, ``..``, links, device files or
oversized contents are refused before anything is written.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from kdexport.artifact import atomic_file
from kdexport.bundle import runner as bundle_runner
from kdexport.errors import KdxError

MTIME = 946684800  # 2000-01-01T00:00Z on every member: the same run gives the same bytes
MAX_MEMBER_BYTES = 1 << 30  # refuse members over 1 GiB and archives over 4 GiB unpacked
MAX_TOTAL_BYTES = 4 << 30


def _member(path: Path, name: str) -> tarfile.TarInfo:
    """A tar header with nothing of this machine in it: fixed time, owner and modes."""
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
    if path.is_dir():
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = path.stat().st_size, 0o755 if path.name == "run.py" else 0o644
    return info


def write_archive(root: Path, out: Path) -> None:
    """``root`` as a reproducible .tar.gz at ``out`` (sorted members, no timestamps), atomically."""
    # 0o644 whatever the umask: an archive is made to be copied around. filename="" and
    # mtime=0 keep the output's name and the clock out of the gzip header.
    with (
        atomic_file(out, 0o644) as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in [root, *sorted(root.rglob("*"))]:
            name = PurePosixPath(root.name, path.relative_to(root).as_posix()).as_posix()
            info = _member(path, name)
            if info.isdir():
                tar.addfile(info)
            else:
                with open(path, "rb") as f:
                    tar.addfile(info, f)


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r:gz")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise KdxError(f"{archive}: not a readable .tar.gz bundle ({e}); copy it again") from None


def _check_member(m: tarfile.TarInfo) -> str | None:
    """Why ``m`` may not be unpacked, if it may not."""
    parts = PurePosixPath(m.name).parts
    if not parts or parts == (".",):
        return "has an empty name"
    if m.name.startswith(("/", "\\")) or (parts and ":" in parts[0]):
        return "has an absolute path"
    if ".." in parts or "\\" in m.name:
        return "has a path that leaves the folder ('..' or '\\')"
    if m.issym() or m.islnk():
        return f"is a link (to '{m.linkname}'); bundles hold only files and folders"
    if not (m.isfile() or m.isdir()):
        return "is a device, pipe or other special file"
    return None


def _members(tar: tarfile.TarFile, archive: Path, limits: tuple[int, int]) -> list[tarfile.TarInfo]:
    """Every member, checked before anything is written; one top-level folder."""
    members, total, tops = [], 0, set()
    for m in tar:
        why = _check_member(m)
        if why is None and m.size > limits[0]:
            why = f"is {m.size:,} bytes, over the {limits[0]:,}-byte limit"
        total += m.size
        if why is None and total > limits[1]:
            why = f"takes the archive over {limits[1]:,} bytes unpacked"
        if why:
            raise KdxError(f"{archive}: member '{m.name}' {why}; refusing the archive")
        tops.add(PurePosixPath(m.name).parts[0])
        members.append(m)
    if len(tops) != 1:
        raise KdxError(
            f"{archive}: a bundle holds one top folder, this has {len(tops)}; not a bundle"
        )
    return members


def extract(
    archive: str | Path,
    dest: str | Path,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> Path:
    """Unpack a bundle archive into the new folder ``dest``; nothing is written elsewhere.

    Every member is checked first (see ``_check_member``); the tar "data" filter, where Python
    has it, applies the same rules again while writing. Returns ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise KdxError(f"{archive}: no such bundle archive")
    if dest.exists():
        raise KdxError(f"{dest} exists; unpack into a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        with _open_tar(archive) as tar:
            members = _members(tar, archive, (max_member_bytes, max_total_bytes))
            filt = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **filt)
        os.replace(tmp / PurePosixPath(members[0].name).parts[0], dest)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise KdxError(f"{archive}: truncated or corrupt archive ({e}); copy it again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def verify_folder(root: Path, label: str | Path) -> dict:
    """``run.py verify`` of an unpacked bundle; its failure as a KdxError naming ``label``."""
    try:
        return bundle_runner.verify(root)
    except bundle_runner.BundleError as e:
        raise KdxError(f"{label}: {e}") from None


def verify(bundle: str | Path) -> dict:
    """Checksums and golden outputs of a bundle (archive or folder), as run.py verify does."""
    bundle = Path(bundle)
    if bundle.is_dir():
        return verify_folder(bundle, bundle)
    if not bundle.is_file():
        raise KdxError(f"{bundle}: no such bundle; give a .kdx.tar.gz archive or a bundle folder")
    with tempfile.TemporaryDirectory(prefix="kdx-verify-") as tmp:
        return verify_folder(extract(bundle, Path(tmp) / "bundle"), str(bundle))
