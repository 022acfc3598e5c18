"""The offline speech example: ten keywords spoken by espeak-ng, with background noise.

    python -m kdexport.modalities.speech.example OUT [--per-word N] [--seed S]

writes ``OUT/words/<word>/<word>_NNNN.wav`` (16 kHz mono 16-bit, 1 s each) for the words of
``WORDS``, ``OUT/noise/{white,pink,brown,hum}.wav`` (10 s each, for training augmentation) and
``OUT/manifest.csv`` (``path,label`` and how each clip was made). Each clip draws, from the seed,
an espeak-ng voice (accent and variant), speed, pitch, level, position in the window, and a
noise kind and SNR (or none). Synthetic speech, no real data: a data set to run the speech
pipeline end to end without a download, not one to judge a keyword spotter by.

The data set is written into a temporary folder beside ``OUT`` and renamed into place when
complete, so an interrupted run leaves no ``OUT`` that looks finished.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kdexport.errors import KdxError
from kdexport.modalities.speech.audio import resample
from kdexport.modalities.speech.noise import KINDS, make_noise, mix_at_snr

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-us-nyc")
VARIANTS = ("", "+m3", "+m6", "+f2", "+f4")  # espeak-ng's male and female variants
SNRS = (None, 20.0, 10.0, 5.0)  # None: clean
RATE, SAMPLES, NOISE_SECONDS = 16000, 16000, 10


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise KdxError("the speech example needs espeak-ng: apt-get install espeak-ng")
    return exe


def _speak(exe: str, word: str, voice: str, speed: int, pitch: int, wav: Path) -> np.ndarray:
    """espeak-ng's WAV (22,050 Hz) of ``word`` at 16 kHz, leading and trailing silence cut;
    ``wav`` is the scratch file it writes."""
    import soundfile as sf

    cmd = [exe, "-w", str(wav), "-v", voice, "-s", str(speed), "-p", str(pitch), word]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not wav.is_file():
        raise KdxError(f"espeak-ng failed on voice {voice!r}: {done.stderr.strip()[:120]}")
    data, rate = sf.read(str(wav), dtype="float32")
    wav.unlink()
    loud = np.flatnonzero(np.abs(data) > 0.01 * np.abs(data).max())
    return resample(data[loud[0] : loud[-1] + 1], rate, RATE)


def _clip(exe: str, word: str, index: int, seed: int, tmp: Path) -> tuple[np.ndarray, dict]:
    """One 1 s clip and the draws that made it; each clip has its own generator (seed, word,
    index), so clips come out the same whatever the order or number of threads."""
    rng = np.random.default_rng([seed, WORDS.index(word), index])
    voice = rng.choice(ACCENTS) + rng.choice(VARIANTS)
    speed, pitch = int(rng.integers(120, 201)), int(rng.integers(20, 81))
    speech = _speak(exe, word, voice, speed, pitch, tmp / f"{word}_{index}.wav")[:SAMPLES]
    speech *= rng.uniform(0.2, 0.9) / np.abs(speech).max()
    wave = np.zeros(SAMPLES, np.float32)
    start = int(rng.integers(0, SAMPLES - len(speech) + 1))
    wave[start : start + len(speech)] = speech
    snr = SNRS[int(rng.integers(len(SNRS)))]
    kind = str(rng.choice(KINDS))
    if snr is not None:
        wave = mix_at_snr(wave, make_noise(kind, SAMPLES, rng, RATE), snr)
    row = {"voice": voice, "speed": speed, "pitch": pitch, "snr_db": snr or "", "noise": kind}
    return np.clip(wave, -1.0, 1.0), row if snr is not None else {**row, "noise": ""}


def _write_words(exe: str, root: Path, per_word: int, seed: int, tmp: Path) -> list[dict]:
    import soundfile as sf

    def one(job: tuple[str, int]) -> dict:
        word, i = job
        wave, row = _clip(exe, word, i, seed, tmp)
        rel = Path("words") / word / f"{word}_{i:04d}.wav"
        sf.write(str(root / rel), wave, RATE, subtype="PCM_16")
        return {"path": rel.as_posix(), "label": word, **row}

    for word in WORDS:
        (root / "words" / word).mkdir(parents=True)
    jobs = [(w, i) for w in WORDS for i in range(per_word)]
    with ThreadPoolExecutor(
        max_workers=os.cpu_count() or 1
    ) as pool:  # espeak-ng runs outside the GIL
        return list(pool.map(one, jobs))


def _write_noise(root: Path, seed: int) -> None:
    import soundfile as sf

    (root / "noise").mkdir()
    rng = np.random.default_rng([seed, len(WORDS)])  # apart from every clip's generator
    for kind in KINDS:
        x = 0.1 * make_noise(kind, NOISE_SECONDS * RATE, rng, RATE)  # RMS 0.1: no clipping
        sf.write(str(root / "noise" / f"{kind}.wav"), x, RATE, subtype="PCM_16")


def write_example(out: str | Path, per_word: int = 200, seed: int = 0) -> Path:
    """Write the data set into ``out`` (which must not exist, or be empty); return it."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KdxError(f"{out} exists and is not empty; name a new folder or remove it")
    exe = _espeak()
    try:
        import soundfile  # noqa: F401
    except ImportError:
        raise KdxError(
            "the speech example needs soundfile: pip install 'kdexport[speech]'"
        ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / "scratch").mkdir()
        rows = _write_words(exe, staging, per_word, seed, staging / "scratch")
        (staging / "scratch").rmdir()
        _write_noise(staging, seed)
        with open(staging / "manifest.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdexport.modalities.speech.example")
    parser.add_argument("out", help="folder to write (must not exist, or be empty)")
    parser.add_argument("--per-word", type=int, default=200, help="clips per word (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.per_word < 1:
        parser.error("--per-word must be at least 1")
    start = time.perf_counter()
    try:
        out = write_example(args.out, args.per_word, args.seed)
    except KdxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = args.per_word * len(WORDS)
    print(
        f"wrote {n} clips of {len(WORDS)} words and {len(KINDS)} noise clips to {out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
