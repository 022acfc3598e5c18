"""WAV clips in, float32 mono windows out; and the list of clips a data set holds.

``read_clip`` decodes one file with soundfile (8-, 16-, 24-bit PCM and 32-bit float all come
back as float32 in [-1, 1]), resamples it to the model's rate and pads it to the window. Every
bad input is one ``KdxError`` line naming the file and the fix. ``list_clips`` only lists: it
decodes nothing, so a data set of any size is listed in the time it takes to walk it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

from kdexport.errors import KdxError

SILENT_PEAK = 1e-4  # below this peak a clip holds no signal (16-bit PCM's step is 3e-5)
MANIFEST_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class Clip:
    """A decoded window: ``wave`` (float32, exactly the window's length), the file's own rate,
    whether it was resampled and how many zeros were padded at the end."""

    wave: np.ndarray
    source_rate: int
    resampled: bool
    padded: int


def _soundfile():
    try:
        import soundfile
    except ImportError:
        raise KdxError(
            "reading WAV files needs the soundfile package: pip install 'kdexport[speech]'"
        ) from None
    return soundfile


def decode(path: Path) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the rate; a file libsndfile cannot read is one line."""
    sf = _soundfile()
    if not path.is_file():
        raise KdxError(f"{path}: no such file; check the path (or the manifest row naming it)")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        # libsndfile's own words ("Format not recognised") say what it saw; keep them short.
        raise KdxError(
            f"{path}: not a readable audio file ({str(e).splitlines()[-1][:80]}); "
            "give a WAV file (convert with e.g. `sox in.mp3 -r 16000 -c 1 out.wav`)"
        ) from None
    return data, int(rate)


def header(path: Path, sample_rate: int = 16000, samples: int = 16000) -> int:
    """The rate of ``path`` after checking by its header what ``load_clip`` checks but
    silence: readable, mono, not empty, not longer than the window once at ``sample_rate``."""
    sf = _soundfile()
    if not path.is_file():
        raise KdxError(f"{path}: no such file; check the path (or the manifest row naming it)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise KdxError(
            f"{path}: not a readable audio file ({str(e).splitlines()[-1][:80]}); "
            "give a WAV file (convert with e.g. `sox in.mp3 -r 16000 -c 1 out.wav`)"
        ) from None
    _check_shape(path, info.frames, info.channels, info.samplerate, sample_rate, samples)
    return int(info.samplerate)


def _check_shape(path: Path, frames: int, channels: int, rate: int, sample_rate: int, samples: int):
    if channels != 1:
        raise KdxError(
            f"{path}: {channels} channels where mono is expected; "
            f"convert it to mono, e.g. `sox {path.name} -c 1 mono.wav`"
        )
    if frames == 0:
        raise KdxError(f"{path}: empty clip (0 samples); remove it or record it again")
    if round(frames * sample_rate / rate) > samples:
        raise KdxError(
            f"{path}: {frames / rate:.3f} s long, longer than the {samples / sample_rate:.3f} s "
            f"window ({samples} samples at {sample_rate} Hz); trim the clip "
            "(e.g. `sox in.wav out.wav trim 0 1`) or set a longer clip length"
        )


def resample(wave: np.ndarray, source_rate: int, rate: int) -> np.ndarray:
    """``wave`` at ``rate``: polyphase filtering (scipy's resample_poly, a Kaiser-windowed FIR),
    which keeps a tone's frequency and, unlike an FFT resample, adds no wrap-around at the ends."""
    if source_rate == rate:
        return wave
    from scipy.signal import resample_poly

    g = gcd(source_rate, rate)
    return resample_poly(wave, rate // g, source_rate // g).astype(np.float32)


def load_clip(path: str | Path, sample_rate: int = 16000, samples: int = 16000) -> Clip:
    """Read ``path`` as exactly ``samples`` float32 values at ``sample_rate``.

    A clip at another rate is resampled (``Clip.resampled`` says so). A shorter clip is padded
    with zeros at the end, as TensorFlow's ``decode_wav(desired_samples=...)`` does for Speech
    Commands: the samples the file holds keep their place, so a clip read twice, or read on a
    device, gives the same window. A longer clip is refused: cutting it would guess which part
    holds the word.
    """
    path = Path(path)
    data, rate = decode(path)
    frames, channels = data.shape
    _check_shape(path, frames, channels, rate, sample_rate, samples)
    wave = resample(data[:, 0], rate, sample_rate)[:samples]
    if float(np.max(np.abs(wave))) < SILENT_PEAK:
        raise KdxError(
            f"{path}: silent clip (peak below {SILENT_PEAK:g}); remove it, or record it again "
            "(background-noise clips belong in the noise folder, not in a class)"
        )
    padded = samples - len(wave)
    if padded:
        wave = np.concatenate([wave, np.zeros(padded, np.float32)])
    return Clip(np.ascontiguousarray(wave, np.float32), rate, rate != sample_rate, padded)


def read_clip(path: str | Path, sample_rate: int = 16000, samples: int = 16000) -> np.ndarray:
    """The float32 mono window of ``path`` (see ``load_clip``, which also says if it resampled)."""
    return load_clip(path, sample_rate, samples).wave


def list_clips(source: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """(paths, label indices, class names) of a data set, decoding nothing.

    ``source`` is a folder with one sub-folder of ``.wav`` files per class (sorted by name; a
    sub-folder whose name starts with ``_``, such as Speech Commands' ``_background_noise_``,
    is not a class), or a ``.csv`` / ``.jsonl`` manifest of ``path,label`` rows whose paths are
    relative to the manifest. Class names are sorted, so label indices do not depend on order.
    """
    source = Path(source)
    if source.is_dir():
        return _list_folder(source)
    if source.suffix.lower() in MANIFEST_SUFFIXES and source.is_file():
        return _list_manifest(source)
    raise KdxError(
        f"{source}: not a folder of class sub-folders nor a .csv/.jsonl manifest; check the path"
    )


def _list_folder(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("_"))
    if not classes:
        raise KdxError(f"{folder}: no class sub-folders; put each class's .wav files in one")
    paths, labels = [], []
    for i, name in enumerate(classes):
        wavs = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() == ".wav")
        if not wavs:
            raise KdxError(
                f"{folder / name}: class folder without .wav files; add some or remove it"
            )
        paths += wavs
        labels += [i] * len(wavs)
    return paths, labels, classes


def _manifest_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a CSV with a header or of a JSONL file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        return [(reader.line_num, row) for row in reader]
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError:
                raise KdxError(f"{path} line {n}: not a JSON object; fix the line") from None
    return rows


def _list_manifest(path: Path) -> tuple[list[Path], list[int], list[str]]:
    entries = []
    for n, row in _manifest_rows(path):
        if not isinstance(row, dict) or not row.get("path") or row.get("label") in (None, ""):
            raise KdxError(f"{path} line {n}: needs a 'path' and a 'label'; fix the row")
        clip = path.parent / str(row["path"])
        if not clip.is_file():
            raise KdxError(f"{path} line {n}: {row['path']} does not exist; fix or remove the row")
        entries.append((clip, str(row["label"])))
    if not entries:
        raise KdxError(f"{path}: no rows; a manifest lists path,label rows")
    classes = sorted({label for _, label in entries})
    index = {c: i for i, c in enumerate(classes)}
    return [p for p, _ in entries], [index[c] for _, c in entries], classes
