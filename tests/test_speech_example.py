"""The espeak-ng example data set (kdexport.modalities.speech.example), written small."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from kdexport.errors import KdxError
from kdexport.modalities.speech import example
from kdexport.modalities.speech.audio import list_clips, load_clip

pytest.importorskip("soundfile", reason="the speech extra (soundfile) is not installed")
needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng)",
)


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@needs_espeak
def test_the_example_is_complete_readable_and_the_same_for_a_seed(tmp_path):
    out = example.write_example(tmp_path / "kws", per_word=2, seed=7)
    paths, labels, classes = list_clips(out / "words")
    assert classes == sorted(example.WORDS) and len(paths) == 20
    listed = list_clips(out / "manifest.csv")
    assert sorted(zip(*listed[:2], strict=True)) == sorted(zip(paths, labels, strict=True))
    for path in paths:
        clip = load_clip(path)
        assert clip.source_rate == 16000 and clip.padded == 0 and not clip.resampled
    noise = sorted(p.name for p in (out / "noise").iterdir())
    assert noise == ["brown.wav", "hum.wav", "pink.wav", "white.wav"]
    assert [p.name for p in tmp_path.iterdir()] == ["kws"]  # no staging folder left
    again = example.write_example(tmp_path / "again", per_word=2, seed=7)
    assert _digest(out) == _digest(again)
    with pytest.raises(KdxError, match="exists and is not empty"):
        example.write_example(out, per_word=1)
    assert example.main([str(out)]) == 1


def test_without_espeak_ng_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(KdxError, match="apt-get install espeak-ng"):
        example.write_example(tmp_path / "kws", per_word=1)
    assert not (tmp_path / "kws").exists()
