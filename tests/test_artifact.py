"""Artifacts are written atomically, verified on open, and tied to their parents."""

import json

import pytest

from kdexport.artifact import Artifact
from kdexport.errors import KdxError


def _make(path, text, parents=()):
    with Artifact.create(path, "thing", {"text": text}, list(parents)) as w:
        (w.path / "data.txt").write_text(text)
        w.checks["length"] = len(text)
    return w.artifact


def test_create_and_open(tmp_path):
    art = _make(tmp_path / "a", "hello")
    opened = Artifact.open(tmp_path / "a", "thing", "make a")
    assert opened.checks == {"length": 5}
    assert opened.manifest["files"]["data.txt"]["bytes"] == 5
    assert art.path == tmp_path / "a"


def test_failure_keeps_the_previous_artifact(tmp_path):
    _make(tmp_path / "a", "old")
    with pytest.raises(RuntimeError), Artifact.create(tmp_path / "a", "thing", {}) as w:
        (w.path / "data.txt").write_text("new, half written")
        raise RuntimeError("killed")
    assert (tmp_path / "a" / "data.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary directory left


def test_tampered_file_is_caught(tmp_path):
    _make(tmp_path / "a", "hello")
    (tmp_path / "a" / "data.txt").write_text("HELLO")
    with pytest.raises(KdxError, match="data.txt: missing or changed"):
        Artifact.open(tmp_path / "a", "thing", "make a")


def test_missing_and_wrong_kind(tmp_path):
    with pytest.raises(KdxError, match="missing or incomplete; run `make a` first"):
        Artifact.open(tmp_path / "a", "thing", "make a")
    _make(tmp_path / "a", "x")
    with pytest.raises(KdxError, match="not a 'other' artifact"):
        Artifact.open(tmp_path / "a", "other", "make other")
    manifest = tmp_path / "a" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(KdxError, match="newer kdexport"):
        Artifact.open(tmp_path / "a", "thing", "make a")


def test_child_of_a_replaced_parent_is_stale(tmp_path):
    parent = _make(tmp_path / "p", "one")
    _make(tmp_path / "c", "child", [parent])
    Artifact.open(tmp_path / "c", "thing", "make c")
    _make(tmp_path / "p", "two")
    with pytest.raises(KdxError, match="made from an older thing; run `make c` again"):
        Artifact.open(tmp_path / "c", "thing", "make c")


def test_files_and_folders_follow_the_umask(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        art = _make(tmp_path / "a", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(art.file("manifest.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(art.path.stat().st_mode) == 0o755
