"""Reading WAV clips (kdexport.modalities.speech.audio): formats, resampling, padding, every bad
input as one line naming the file and the fix, and listing a data set without decoding it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from kdexport.errors import KdxError
from kdexport.modalities.speech.audio import list_clips, load_clip, read_clip

sf = pytest.importorskip("soundfile", reason="the speech extra (soundfile) is not installed")
RATE = 16000


def sine(freq: float, seconds: float, rate: int = RATE, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(
        np.float32
    )


def write(path, data, rate=RATE, subtype="PCM_16"):
    sf.write(str(path), data, rate, subtype=subtype)
    return path


def peak_hz(wave: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * rate / len(wave))


@pytest.mark.parametrize(
    ("subtype", "step"),
    [("PCM_U8", 2**-7), ("PCM_16", 2**-15), ("PCM_24", 2**-23), ("FLOAT", 1e-7)],
)
def test_every_sample_format_reads_as_float32_in_range(tmp_path, subtype, step):
    x = sine(440, 0.5)
    wave = read_clip(write(tmp_path / "a.wav", x, subtype=subtype), RATE, RATE)
    assert wave.dtype == np.float32 and wave.shape == (RATE,)
    assert np.abs(wave[: len(x)] - x).max() <= step
    assert np.abs(wave).max() <= 1.0


def test_a_short_clip_is_padded_with_zeros_at_the_end(tmp_path):
    clip = load_clip(write(tmp_path / "a.wav", sine(440, 0.25)), RATE, RATE)
    assert clip.padded == RATE - 4000 and not clip.resampled and clip.source_rate == RATE
    assert np.abs(clip.wave[:4000]).max() > 0.4 and not clip.wave[4000:].any()


@pytest.mark.parametrize("rate", [8000, 44100])
def test_other_rates_are_resampled_and_a_tone_keeps_its_frequency(tmp_path, rate):
    clip = load_clip(write(tmp_path / "a.wav", sine(1000, 1.0, rate), rate), RATE, RATE)
    assert clip.resampled and clip.source_rate == rate and clip.padded == 0
    assert clip.wave.shape == (RATE,) and clip.wave.dtype == np.float32
    assert abs(peak_hz(clip.wave) - 1000) <= 2
    assert abs(np.sqrt(np.mean(clip.wave[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01


def _one_line(error, *words):
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_bad_inputs_are_one_line_naming_the_file_and_the_fix(tmp_path):
    jpeg = tmp_path / "photo.wav"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 8)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    stereo = write(tmp_path / "stereo.wav", np.stack([sine(440, 0.5)] * 2, axis=1))
    empty = write(tmp_path / "empty.wav", np.zeros(0, np.float32))
    silent = write(tmp_path / "silent.wav", np.zeros(8000, np.float32))
    long = write(tmp_path / "long.wav", sine(440, 1.5))
    cases = [
        (jpeg, ["photo.wav", "not a readable audio file", "WAV"]),
        (garbage, ["garbage.wav", "not a readable audio file"]),
        (stereo, ["stereo.wav", "2 channels", "mono", "sox"]),
        (empty, ["empty.wav", "empty clip"]),
        (silent, ["silent.wav", "silent clip"]),
        (long, ["long.wav", "1.500 s", "1.000 s window", "trim"]),
        (tmp_path / "missing.wav", ["missing.wav", "no such file"]),
    ]
    for path, words in cases:
        with pytest.raises(KdxError) as error:
            read_clip(path, RATE, RATE)
        _one_line(error, *words)


def test_a_clip_just_longer_after_resampling_is_refused(tmp_path):
    with pytest.raises(KdxError, match="longer than"):
        read_clip(write(tmp_path / "a.wav", sine(440, 1.01, 8000), 8000), RATE, RATE)


def test_without_soundfile_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    path = write(tmp_path / "a.wav", sine(440, 0.5))
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import soundfile now fails
    with pytest.raises(KdxError, match=r"pip install 'kdexport\[speech\]'"):
        read_clip(path)


def _folder(tmp_path):
    root = tmp_path / "data"
    for name, n in [("yes", 2), ("no", 3)]:
        (root / name).mkdir(parents=True)
        for i in range(n):
            # not audio at all: listing must not decode
            (root / name / f"{i}.wav").write_bytes(b"not decoded")
    (root / "_background_noise_").mkdir()
    (root / "no" / "notes.txt").write_text("ignored")
    return root


def test_a_class_folder_lists_sorted_without_decoding(tmp_path):
    paths, labels, classes = list_clips(_folder(tmp_path))
    assert classes == ["no", "yes"]
    assert labels == [0, 0, 0, 1, 1]
    assert [p.parent.name + "/" + p.name for p in paths] == [
        "no/0.wav",
        "no/1.wav",
        "no/2.wav",
        "yes/0.wav",
        "yes/1.wav",
    ]


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = _folder(tmp_path)
    (root / "maybe").mkdir()
    with pytest.raises(KdxError) as error:
        list_clips(root)
    _one_line(error, "maybe", "without .wav files")
    with pytest.raises(KdxError, match="no class sub-folders"):
        list_clips(tmp_path / "data" / "_background_noise_")


def test_csv_and_jsonl_manifests_list_paths_relative_to_themselves(tmp_path):
    root = _folder(tmp_path)
    (root / "list.csv").write_text("path,label\nyes/0.wav,yes\nno/1.wav,no\nyes/1.wav,yes\n")
    rows = [{"path": "no/0.wav", "label": "no"}, {"path": "yes/0.wav", "label": "yes"}]
    (root / "list.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    paths, labels, classes = list_clips(root / "list.csv")
    assert classes == ["no", "yes"] and labels == [1, 0, 1]
    assert paths[1] == root / "no" / "1.wav"
    paths, labels, classes = list_clips(root / "list.jsonl")
    assert classes == ["no", "yes"] and labels == [0, 1] and paths[0] == root / "no" / "0.wav"


def test_a_manifest_row_naming_a_missing_file_is_an_error_naming_the_row(tmp_path):
    root = _folder(tmp_path)
    (root / "list.csv").write_text("path,label\nyes/0.wav,yes\nyes/9.wav,yes\n")
    with pytest.raises(KdxError) as error:
        list_clips(root / "list.csv")
    _one_line(error, "list.csv line 3", "yes/9.wav", "does not exist")
    (root / "bad.jsonl").write_text('{"path": "yes/0.wav"}\n')
    with pytest.raises(KdxError, match="line 1: needs a 'path' and a 'label'"):
        list_clips(root / "bad.jsonl")
