"""A text classifier through the whole pipeline (issue 14): the conformance case of the text
model family. A tiny BERT teacher (2 layers, hidden 32) with a WordPiece tokenizer learnt from
300 synthetic reviews, distilled into a 1-layer student of its config, exported with named
int64 token inputs, compiled for ONNX Runtime and OpenVINO, timed per (batch x sequence)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICK_TIMING, fails, kdx

from kdexport.feeds import load_sample
from kdexport.modalities.text.synthetic import CLASSES, generate, write_reviews
from kdexport.modalities.text.tiny import tiny_teacher

pytestmark = pytest.mark.backends

ROWS = 300


def text_args(folder: Path, *more: str) -> list[str]:
    sets = [
        f"data.source={folder / 'reviews.csv'}",
        f"teacher.model=hf:{folder / 'teacher'}",
        "data.max_length=64",
        "teacher.epochs=2",
        "teacher.lr=0.002",
        "distill.epochs=2",
        "distill.student=hf-student:num_hidden_layers=1",
        "compile.targets=['ort-cpu', 'openvino-cpu']",
        "benchmark.text_shapes=['1x16', '2x64']",
        *QUICK_TIMING,
        "benchmark.min_iters=5",
        *more,
    ]
    return ["--recipe", "text", *(a for s in sets for a in ("--set", s))]


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text-example")
    write_reviews(folder / "reviews.csv", ROWS, seed=0)
    texts = [t for t, _ in generate(ROWS, seed=0)]
    tiny_teacher(
        folder / "teacher", texts, list(CLASSES), vocab_size=300, max_position_embeddings=64
    )
    return folder


@pytest.fixture(scope="module")
def text_run(text_folder, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("text-run") / "run"
    r = kdx("distill-and-export", "--out", out, *text_args(text_folder), "--json")
    return out, json.loads(r.stdout.strip().splitlines()[-1])


def _checks(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())["checks"]


def test_a_text_run_exports_compiles_and_times_per_shape(text_run):
    run, figs = text_run
    student = _checks(run, "student")
    assert student["init"]["init"] == "every-k-th-layer" and student["init"]["k"] == 2
    assert student["init"]["layers"] == {"0": 0}
    exported = _checks(run, "export")
    for model in ("teacher", "student"):
        e = exported[model]
        assert [i["name"] for i in e["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
        assert all(
            i["dtype"] == "int64" and i["shape"] == ["batch", "sequence"] for i in e["inputs"]
        )
        assert e["padding_drift"] <= 1e-4 and e["parity"]["passed"]
        assert set(e["shape_parity"]) == {"1x16", "3x37"}  # the shapes within 64 positions
        assert max(e["shape_parity"].values()) <= 1e-4
    for target in ("ort-cpu", "openvino-cpu"):
        entry = figs["targets"][target]
        assert entry["student"]["max_abs_diff"] <= 1e-4 and entry["student"]["top1_agreement"] == 1
        latency = entry["student"]["latency"]
        assert set(latency) == {"1x16", "2x64"}
        assert latency["2x64"]["tokens_per_s"] == pytest.approx(
            2 * 64 * 1000 / latency["2x64"]["p50_ms"]
        )
        assert set(entry["speedup_by_batch"]) == {"1x16", "2x64"}
    report = (run / "report.md").read_text()
    assert "A text model: latency columns at shape 1x16" in report  # smallest batch, longest seq
    assert "| p50 ms (1x16) | p90 ms (1x16) |" in report


def test_transformer_cuts_of_the_teacher_export_with_parity(text_folder, text_run, tmp_path):
    """The conformance case of cut transformers: ``prune:0.5`` (one of the teacher's two heads,
    half its hidden and intermediate width) as the run's student and ``prune:depth=0.5`` (one of
    its two layers) as a family member, distilled from the unpruned teacher, rebuilt from their
    configs, exported and compiled with parity on both CPU targets."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(text_run[0] / "teacher", run / "teacher")
    more = ["distill.student=prune:0.5", "family.students=['prune:depth=0.5']",
            "benchmark.text_shapes=['1x16']"]  # fmt: skip
    r = kdx("distill-and-export", "--out", run, *text_args(text_folder, *more), "--json")
    figs = json.loads(r.stdout.strip().splitlines()[-1])
    member = run / "family" / "prune-depth-0.5"
    width, depth = _checks(run, "student")["init"], _checks(member, "student")["init"]
    assert width["ratio"] == 0.5 and width["macs_ratio"] < 0.5
    assert depth["layers_removed"] in ([0], [1]) and len(depth["block_importance"]) == 2
    width_config = json.loads((run / "student" / "structure.json").read_text())["config"]
    assert (width_config["hidden_size"], width_config["num_attention_heads"]) == (16, 1)
    depth_config = json.loads((member / "student" / "structure.json").read_text())["config"]
    assert (depth_config["hidden_size"], depth_config["num_hidden_layers"]) == (32, 1)
    for folder in (run, member):
        exported = _checks(folder, "export")["student"]
        assert exported["parity"]["passed"] and exported["padding_drift"] <= 1e-4
        for target in ("ort-cpu", "openvino-cpu"):
            compiled = _checks(folder, "compile")["targets"][target]["student"]
            assert compiled["parity"]["passed"], (folder.name, target)
    assert figs["targets"]["ort-cpu"]["student"]["top1_agreement"] == 1


def test_a_text_shape_longer_than_max_length_is_one_line(text_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(text_run[0], run)
    before = (run / "benchmark" / "manifest.json").read_bytes()
    fails(
        "benchmark",
        run,
        "--set",
        "benchmark.text_shapes=['1x16', '2x65']",
        message="benchmark.text_shapes: '2x65' has more tokens than data.max_length 64, where "
        "this run's texts were cut; give at most 2x64",
    )
    assert (run / "benchmark" / "manifest.json").read_bytes() == before


def test_the_held_out_tokens_are_named_inputs_with_the_padding_cut(text_run):
    run, _ = text_run
    inputs, arrays = load_sample(run / "export" / "io_sample.npz")
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.dtype == np.int64 and ids.shape == mask.shape and ids.shape[1] <= 64
    lengths = mask.sum(axis=1)
    assert 0 < lengths.min() < lengths.max() == ids.shape[1]  # cut to the longest text
    assert (ids[mask == 0] == 0).all()  # the pad id after each text
    assert set(arrays) == {"y", "teacher", "student"}


def test_text_runs_reuse_the_tokenised_data(text_folder, text_run, tmp_path):
    run, _ = text_run
    cached = sorted(p.name for p in (run / "cache").glob("text-*.npz"))
    assert cached, "the tokenised data is cached with the run"
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    kdx("export", copy)  # stages read the recorded recipe and the cache


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["data.text_column=body"], "no column 'body'; its columns: text, label"),
        (["data.label_column=stars"], "no column 'stars'"),
        (["data.max_length=100"], "longer than the model's position embeddings"),
        (["distill.student=hf-student:num_layers=1"], "has no key 'num_layers'"),
        (["data.tokenizer=hf:/nowhere"], "no such folder"),
    ],
)
def test_text_bad_input_is_one_line_before_training(text_folder, tmp_path, sets, message):
    out = tmp_path / "run"
    fails("distill-and-export", "--out", out, *text_args(text_folder, *sets), message=message)
    assert not (out / "teacher").exists()


def test_text_data_mistakes_are_one_line(text_folder, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(text_folder, folder)
    (folder / "reviews.csv").write_text("text,label\ngood,positive\n,negative\n")
    fails(
        "distill-and-export",
        "--out",
        tmp_path / "r1",
        *text_args(folder),
        message="row 2 has no text",
    )
    (folder / "reviews.csv").write_text("text,label\ngood,1\nbad,positive\n")
    fails("distill-and-export", "--out", tmp_path / "r2", *text_args(folder), message="label")
    (folder / "teacher" / "tokenizer.json").unlink()
    write_reviews(folder / "reviews.csv", 50)
    fails(
        "distill-and-export",
        "--out",
        tmp_path / "r3",
        *text_args(folder),
        message="no tokenizer.json",
    )
