"""Speech through the whole pipeline (issue 22): the conformance case of the speech modality.
Synthetic keyword clips (three classes of tone patterns in noise, 0.5 s at 16 kHz) distilled from
the CNN teacher into the DS-CNN student, exported with the log-mel front end inside the graph
(input ``audio``), compiled for ONNX Runtime and OpenVINO, packaged, and read back by run.py
from WAV files as the host read them. Bad input through the CLI: one line each."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICK_TIMING, assert_top_class_matches, fails, kdx, predict_folder

from kdexport.bundle import runner
from kdexport.modalities.speech.audio import read_clip
from kdexport.onnxfile import run_reference

sf = pytest.importorskip("soundfile")
pytestmark = pytest.mark.backends

RATE, SECONDS = 16000, 0.5
SAMPLES = int(RATE * SECONDS)
TONES = {"high": (2000, 2600), "low": (300, 450), "mid": (800, 1100)}


def _clip(rng, tones) -> np.ndarray:
    """Two tones one after the other (a 'word'), at a random level and place, in noise."""
    t = np.arange(int(0.15 * RATE)) / RATE
    word = np.concatenate([np.sin(2 * np.pi * f * t) for f in tones]) * rng.uniform(0.2, 0.8)
    x = 0.01 * rng.standard_normal(SAMPLES)
    start = rng.integers(0, SAMPLES - len(word))
    x[start : start + len(word)] += word
    return x.astype(np.float32)


def write_clips(folder: Path, per_class: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, tones in TONES.items():
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            sf.write(folder / name / f"{i}.wav", _clip(rng, tones), RATE, subtype="PCM_16")
    return folder


def speech_args(source: Path, *more: str) -> list[str]:
    sets = [
        f"data.source={source}",
        f"data.clip_seconds={SECONDS}",
        "data.noise=''",
        "teacher.epochs=2",
        "distill.epochs=2",
        "export.parity_samples=32",
        "compile.targets=['ort-cpu', 'openvino-cpu']",
        "benchmark.batch_sizes=[1, 4]",
        *QUICK_TIMING,
        "benchmark.min_iters=3",
        "benchmark.repeats=1",
        *more,
    ]
    return ["--recipe", "speech", *(a for s in sets for a in ("--set", s))]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("speech") / "words")


@pytest.fixture(scope="module")
def speech_run(clips, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("speech-run") / "run"
    r = kdx("distill-and-export", "--out", out, *speech_args(clips), "--json")
    return out, json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def speech_bundle(speech_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("speech-bundle") / "bundle"
    kdx("package", speech_run[0], "--dir", out)
    return out


def test_the_export_takes_waveforms_and_records_the_modality(speech_run):
    run, figures = speech_run
    checks = json.loads((run / "export" / "manifest.json").read_text())["checks"]
    assert checks["modality"] == "speech"
    assert checks["preprocessing"]["sample_rate"] == RATE
    assert checks["preprocessing"]["samples"] == SAMPLES
    for model in ("teacher", "student"):
        (audio,) = checks[model]["inputs"]
        assert audio["name"] == "audio" and audio["shape"][1] == SAMPLES
        assert isinstance(audio["shape"][0], str)  # a dynamic batch axis
    for target in ("ort-cpu", "openvino-cpu"):
        student = figures["targets"][target]["student"]
        assert student["max_abs_diff"] <= 1e-4 and student["top1_agreement"] == 1.0
    assert set(figures["targets"]["ort-cpu"]["speedup_by_batch"]) == {"1", "4"}


def test_the_student_is_the_ds_cnn_within_its_budget(speech_run):
    run, _ = speech_run
    checks = json.loads((run / "export" / "manifest.json").read_text())["checks"]
    assert checks["student"]["params"] <= 40_000 < checks["teacher"]["params"]


def test_run_py_reads_wav_files_as_the_host_does(speech_bundle, clips, tmp_path):
    """The bundle's run.py (numpy and the wave module) reads each clip to the array the host's
    reader gave the model, and predicts what the exported student gives on the host's arrays."""
    files = sorted((clips / "mid").glob("*.wav"))[:5]
    for f in files:
        host = read_clip(f, RATE, SAMPLES)
        np.testing.assert_array_equal(runner.read_wav(f, RATE, SAMPLES), host)
    predictions = predict_folder(speech_bundle, files, tmp_path / "clips")
    waves = np.stack([read_clip(f, RATE, SAMPLES) for f in files])
    logits = run_reference(speech_bundle / "student.onnx", {"audio": waves})
    assert_top_class_matches(logits, predictions)


@pytest.mark.parametrize(
    ("subtype", "scale"), [("PCM_U8", 1 / 128), ("PCM_24", 2**-23), ("PCM_32", 2**-31)]
)
def test_run_py_reads_every_pcm_width_as_soundfile_does(tmp_path, subtype, scale):
    x = 0.5 * np.sin(np.linspace(0, 60, 4000)).astype(np.float32)
    path = tmp_path / "clip.wav"
    sf.write(path, x, RATE, subtype=subtype)
    got = runner.read_wav(path, RATE, SAMPLES)
    np.testing.assert_allclose(got, read_clip(path, RATE, SAMPLES), atol=1e-7)
    assert np.abs(got[:4000] - x).max() <= 2 * scale and not got[4000:].any()


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: sf.write(p, np.zeros((800, 2), np.float32) + 0.1, RATE), "2 channels"),
        (lambda p: sf.write(p, np.full(800, 0.1, np.float32), 8000), "8000 Hz, the model takes"),
        (lambda p: sf.write(p, np.full(SAMPLES + 1, 0.1, np.float32), RATE), "trim it"),
        (lambda p: p.write_bytes(b"RIFF....WAVEjunk" * 8), "not a readable WAV file"),
    ],
)
def test_run_py_refuses_bad_clips_in_one_line(speech_bundle, tmp_path, write, message):
    clip = tmp_path / "bad.wav"
    write(clip)
    out = subprocess.run(
        [sys.executable, str(speech_bundle / "run.py"), "predict", str(clip)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ") and message in out.stderr, out.stderr


def _one_bad_clip(clips: Path, tmp_path: Path, write) -> Path:
    source = tmp_path / "words"
    shutil.copytree(clips, source)
    write(source / "low" / "bad.wav")
    return source


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 not audio"), "not a readable audio file"),
        (lambda p: sf.write(p, np.full((800, 2), 0.1, np.float32), RATE), "where mono is expected"),
        (lambda p: sf.write(p, np.zeros(0, np.float32), RATE), "empty clip"),
        (lambda p: sf.write(p, np.zeros(800, np.float32), RATE), "silent clip"),
        (lambda p: sf.write(p, np.full(SAMPLES + 1, 0.1, np.float32), RATE), "longer than the"),
    ],
)
def test_bad_clips_in_the_data_are_one_line_naming_the_file(clips, tmp_path, write, message):
    source = _one_bad_clip(clips, tmp_path, write)
    out = tmp_path / "run"
    fails("distill-and-export", "--out", out, *speech_args(source), message=message)
    assert not (out / "teacher").exists()


def test_another_rate_is_resampled_and_counted_or_refused(clips, tmp_path):
    def write(p):
        sf.write(p, _clip(np.random.default_rng(1), TONES["low"])[::2], RATE // 2)

    source = _one_bad_clip(clips, tmp_path, write)
    fails(
        "distill-and-export",
        "--out",
        tmp_path / "run",
        *speech_args(source, "data.resample=false"),
        message="8000 Hz, and data.resample is false",
    )
    from kdexport.data import load_splits

    splits = load_splits(modality="speech", source=str(source), clip_seconds=SECONDS)
    assert splits.preprocessing["resampled"] == 1
    assert splits.preprocessing["from_rates"] == [8000]


def test_8_bit_and_float_clips_are_read(clips, tmp_path):
    source = tmp_path / "words"
    shutil.copytree(clips, source)
    x = _clip(np.random.default_rng(2), TONES["high"])
    sf.write(source / "high" / "u8.wav", x, RATE, subtype="PCM_U8")
    sf.write(source / "high" / "float.wav", x, RATE, subtype="FLOAT")
    from kdexport.data import load_splits

    splits = load_splits(modality="speech", source=str(source), clip_seconds=SECONDS)
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == 3 * 24 + 2


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["data.modality=voice"], "data.modality = 'voice' must be one of image, text, speech"),
        (["distill.student=audio:ds-cnn"], "no modality knows the scheme 'audio:'"),
        (["data.image_size=[8, 8]"], "data.image_size applies to image runs"),
        (["distill.augment=shift"], "augment 'shift' is not for speech runs"),
    ],
)
def test_bad_settings_are_one_line(clips, tmp_path, sets, message):
    fails(
        "distill-and-export", "--out", tmp_path / "run", *speech_args(clips, *sets), message=message
    )


def test_int8_keeps_the_front_end_in_float(speech_run, tmp_path):
    """Quantized, the log-mel front end's 8-bit input and spectrum lose the quiet bands; the
    speech modality keeps it in float (the Log and every node it depends on), as the compile
    stage asks the quantizer (``compile.with_int8_settings``)."""
    import onnx

    from kdexport.backends.profiles import load_target
    from kdexport.backends.quantize import quantize_onnx
    from kdexport.compile import with_int8_settings
    from kdexport.feeds import load_sample
    from kdexport.modalities.speech import SPEECH

    student = speech_run[0] / "export" / "student.onnx"
    target = with_int8_settings(load_target("ort-cpu-int8"), SPEECH, student)
    kept = target.quantization["float_nodes"]
    calibration, _ = load_sample(speech_run[0] / "export" / "calibration.npz")
    quantize_onnx(student, tmp_path / "int8.onnx", calibration, target.quantization)
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    made_by = {o: n for n in graph.node for o in n.output}
    front = [n for n in graph.node if n.name in kept]
    assert {n.op_type for n in front} >= {"Conv", "MatMul", "Log"}
    for node in front:  # no input of a front-end node comes out of a DequantizeLinear
        assert all(
            made_by.get(i) is None or made_by[i].op_type != "DequantizeLinear" for i in node.input
        )
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # the CNN after it is INT8


def test_the_run_manifest_and_the_bundle_record_the_modality(speech_run, speech_bundle):
    run, figures = speech_run
    assert figures["modality"] == "speech"
    assert json.loads((run / "manifest.json").read_text())["modality"] == "speech"
    manifest = json.loads((speech_bundle / "manifest.json").read_text())
    assert manifest["modality"] == "speech"
    assert manifest["speech"]["samples"] == SAMPLES and manifest["speech"]["input"] == "audio"
