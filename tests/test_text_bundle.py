"""Text bundles: `kdexport package` of a text run ships the tokenizer; run.py reads text with the
``tokenizers`` package only (never torch, transformers or kdexport), and verify and bench need
no tokenizers at all.

One tiny run (a 2-layer, hidden-32 BERT teacher on 300 synthetic reviews, one epoch each) is
made once for the module, packaged once; each test works on its own copy of the bundle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICK_TIMING, fails, kdx
from test_package import BLOCKED, FAST_BENCH, device, one_error

from kdexport import plan as placement
from kdexport.artifact import sha256
from kdexport.bundle import runner as bundle_runner
from kdexport.modalities.text.synthetic import CLASSES, generate, write_reviews
from kdexport.modalities.text.tiny import tiny_teacher
from kdexport.modalities.text.tokens import PACKED, at_shape, pack, unpack

ROWS, MAX_LENGTH = 300, 32
TEXTS = [
    "great value, works perfectly and arrived early",
    "broke after two days, a waste of money",
    "it is fine, nothing special",
    "the screen is great but the battery is awful",
]
LONG = " ".join(["the battery is awful but the screen is lovely"] * 20)  # over MAX_LENGTH tokens
FAST_TEXT_BENCH = FAST_BENCH[2:]  # without --batch-sizes 1,4: a text bundle takes shapes
NO_TOKENIZERS = (
    "this bundle holds a text model: run.py needs the tokenizers package to read text; "
    "pip install tokenizers"
)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, teacher folder) of the text recipe on a tiny teacher, fast settings."""
    folder = tmp_path_factory.mktemp("textrun")
    data = write_reviews(folder / "reviews.csv", ROWS)
    teacher = tiny_teacher(
        folder / "teacher", [t for t, _ in generate(ROWS)], list(CLASSES), vocab_size=300
    )
    run = folder / "run"
    sets = [
        f"data.source={data}",
        f"data.max_length={MAX_LENGTH}",
        f"teacher.model=hf:{teacher}",
        "teacher.epochs=1",
        "distill.epochs=1",
        "distill.student=hf-student:num_hidden_layers=1",
        "export.parity_samples=64",
        "compile.targets=['ort-cpu']",
        "benchmark.text_shapes=['1x16']",
        *QUICK_TIMING,
        "benchmark.min_iters=3",
    ]
    kdx(
        "distill-and-export",
        "--recipe",
        "text",
        "--out",
        run,
        *(a for s in sets for a in ("--set", s)),
    )
    return run, teacher


@pytest.fixture(scope="module")
def text_bundle(text_run, tmp_path_factory) -> Path:
    """The text run's student, packaged by the CLI with its ort-cpu compiled form."""
    out = tmp_path_factory.mktemp("tbundle") / "bundle"
    r = kdx("package", text_run[0], "--dir", out, "--target", "ort-cpu")
    assert "bundle id" in r.stdout
    return out


@pytest.fixture
def bundle(text_bundle, tmp_path) -> Path:
    """A private copy of the bundle, as a device gets it."""
    root = tmp_path / text_bundle.name
    shutil.copytree(text_bundle, root)
    return root


def test_manifest_ships_the_tokenizer_and_named_golden_inputs(bundle, text_run):
    m = json.loads((bundle / "manifest.json").read_text())
    names = [i["name"] for i in m["models"]["student"]["inputs"]]
    assert names == ["input_ids", "attention_mask", "token_type_ids"]
    assert m["text"] == {
        "tokenizer": "tokenizer.json",
        "tokenizer_source": f"hf:{text_run[1]}",
        "max_length": MAX_LENGTH,
        "pad_id": 0,
        "inputs": names,
        "token_type_ids": True,
        "columns": m["preprocessing"]["columns"],
        "truncation": m["text"]["truncation"],
        "padding": m["text"]["padding"],
        "shapes": ["1x16"],  # the run's benchmark.text_shapes
    }
    assert m["files"]["tokenizer.json"]["sha256"] == sha256(text_run[1] / "tokenizer.json")
    assert m["labels"] == list(CLASSES)
    pre = m["preprocessing"]
    assert m["modality"] == pre["modality"] == "text"
    assert "layout" not in pre and "image_scale" not in pre
    golden = m["golden"]
    assert golden["input"] == "golden/input.npz" and golden["samples"] == 8
    assert golden["batch_axes"] == {n: [0] for n in names}
    with np.load(bundle / "golden" / "input.npz") as z:
        arrays = {k: z[k] for k in z.files}
    assert sorted(arrays) == sorted(names)
    assert all(
        a.dtype == np.int64 and a.shape == arrays["input_ids"].shape for a in arrays.values()
    )
    assert arrays["attention_mask"][:, -1].any()  # cut back to the longest golden sample
    assert set(golden["outputs"]) == {"student", "compiled/ort-cpu/student"}


@pytest.mark.backends
def test_verify_and_bench_need_no_tokenizers(bundle):
    blocked = BLOCKED + ",tokenizers,transformers"
    out = device(bundle, "verify", blocked=blocked).stdout
    assert "student.onnx: golden output ok" in out and "top-1 agreement 100%" in out
    assert "ort-cpu/student.onnx: golden output ok" in out
    device(bundle, "bench", "--device", "edge", *FAST_TEXT_BENCH, blocked=blocked)
    result = json.loads((bundle.parent / f"{bundle.name}.bench-edge.json").read_text())
    assert result["kind"] == "kdx-bench-result" and result["bundle"]["name"].startswith("student-")
    # default: the run's text shapes, recorded in the manifest
    assert result["options"]["batch_sizes"] == ["1x16"]
    assert set(result["results"]["student"]["latency"]) == {"1x16"}
    assert result["results"]["student"]["latency"]["1x16"]["p50_ms"] > 0


def _torch_student(run: Path, teacher: Path, texts: list) -> np.ndarray:
    """The PyTorch student's logits of ``texts``, tokenised by transformers as the run was."""
    import torch

    from kdexport.context import Run
    from kdexport.distill import load_student
    from kdexport.modalities.text.models import load_tokenizer
    from kdexport.modalities.text.tokens import pack
    from kdexport.pipeline import load_recipe

    data = load_recipe(run / "recipe.toml")["data"]
    student = load_student(Run(run, data)).model
    tokenizer, _ = load_tokenizer(f"hf:{teacher}")
    enc = tokenizer(texts, truncation=True, max_length=MAX_LENGTH)
    x = pack(enc["input_ids"], enc["token_type_ids"], MAX_LENGTH, tokenizer.pad_token_id)
    with torch.no_grad():
        return student(torch.from_numpy(x)).numpy()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.backends
def test_predict_texts_as_the_pytorch_student(bundle, text_run, tmp_path):
    texts = [*TEXTS, LONG]
    want = _softmax(_torch_student(*text_run, texts))
    lines = tmp_path / "reviews.txt"
    lines.write_text("\n".join(texts[:2]) + "\n\n" + "\n".join(texts[2:]) + "\n")
    args = [a for t in texts for a in ("--text", t)]
    for given in ([lines], args):
        r = device(bundle, "predict", *given, "--json", "--top", str(len(CLASSES)))
        result = json.loads(r.stdout)
        assert result["texts"] == texts and result["truncated"] == 1
        assert result["shape"] == [len(texts), MAX_LENGTH]
        for row, top in zip(want, result["predictions"], strict=True):
            assert top[0]["class"] == int(row.argmax())
            assert top[0]["label"] == CLASSES[int(row.argmax())]
            assert all(abs(t["p"] - row[t["class"]]) < 1e-4 for t in top)
    shown = device(bundle, "predict", "--text", TEXTS[0]).stdout.splitlines()
    assert shown[0].startswith(f"0: {CLASSES[int(want[0].argmax())]} (")
    assert shown[0].endswith(f"<- {TEXTS[0]}")


@pytest.mark.backends
def test_predict_reads_jsonl_csv_and_token_arrays(bundle, tmp_path):
    jsonl, csv_file = tmp_path / "t.jsonl", tmp_path / "t.csv"
    jsonl.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)))
    csv_file.write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS)))
    by_text = json.loads(
        device(bundle, "predict", "--json", *sum((["--text", t] for t in TEXTS), [])).stdout
    )
    for path in (jsonl, csv_file):
        result = json.loads(device(bundle, "predict", path, "--json").stdout)
        assert result["texts"] == TEXTS and result["predictions"] == by_text["predictions"]
    # a .npz of named token arrays, as before, needs no tokenizers
    golden = bundle / "golden" / "input.npz"
    result = json.loads(
        device(bundle, "predict", golden, "--json", blocked=BLOCKED + ",tokenizers").stdout
    )
    expected = np.load(bundle / "golden" / "student.npy").argmax(axis=1)
    assert [p[0]["class"] for p in result["predictions"]] == expected.tolist()


def test_tokenisation_is_the_runs(bundle, text_run):
    """run.py's tokenizers-only tokenisation gives the token ids transformers gave the run,
    truncation and text pairs included."""
    from kdexport.modalities.text.models import load_tokenizer

    tokenizer, _ = load_tokenizer(f"hf:{text_run[1]}")
    texts = [*TEXTS, LONG, ("a fine screen", "an awful battery"), ""]
    (batch,), cut = bundle_runner.tokenize(bundle_runner.Bundle(bundle), texts)
    assert cut == 1
    for i, text in enumerate(texts):
        pair = text if isinstance(text, tuple) else (text, None)
        enc = tokenizer(*pair, truncation=True, max_length=MAX_LENGTH)
        n = len(enc["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == enc["input_ids"]
        assert batch["token_type_ids"][i, :n].tolist() == enc["token_type_ids"]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (
            batch["input_ids"].shape[1] - n
        )
        assert (batch["input_ids"][i, n:] == 0).all()


def test_predict_without_tokenizers_says_so_in_one_line(bundle):
    r = device(bundle, "predict", "--text", TEXTS[0], code=1, blocked="tokenizers,torch,kdexport")
    one_error(r.stderr, NO_TOKENIZERS)
    assert r.stderr.strip() == f"error: {NO_TOKENIZERS}"


@pytest.mark.parametrize(
    ("content", "name", "args", "message"),
    [
        ("id,body\n1,x\n", "t.csv", [], "t.csv: no 'text' column (columns: id, body); name it text"),
        ('{"text": "ok"}\n[1]\n', "t.jsonl", [], "t.jsonl, line 2: give one JSON object per line"),
        ('{"text": "ok"}\n{"text": 3}\n', "t.jsonl", [], "t.jsonl, line 2: no 'text' string"),
        ("{x\n", "t.jsonl", [], "t.jsonl, line 1: not JSON"),
        ("\n\n", "t.txt", [], "t.txt: holds no text"),
        ("x\n", "t.txt", ["--text", "y"], "give a text file or --text, not both"),
        (None, None, [], "give an input file or --text TEXT"),
    ],
)  # fmt: skip
def test_predict_bad_text_input(bundle, tmp_path, content, name, args, message):
    given = []
    if content is not None:
        given = [tmp_path / name]
        given[0].write_text(content)
    one_error(device(bundle, "predict", *given, *args, code=1).stderr, message)


def test_a_tokenizer_that_cannot_be_found_is_one_line(text_run, tmp_path):
    """The run's recorded tokenizer (the teacher folder) without its tokenizer.json."""
    original = text_run[1] / "tokenizer.json"
    kept = tmp_path / "kept.json"
    shutil.move(original, kept)
    try:
        r = kdx("package", text_run[0], "--dir", tmp_path / "b", code=1)
    finally:
        shutil.move(kept, original)
    assert f"no tokenizer.json in {text_run[1]}" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()


def test_text_bundle_shapes_default_to_the_benchmarks_within_max_length():
    assert bundle_runner.text_shapes(["1x16", "2x64"], 32) == ["1x16"]
    assert bundle_runner.text_shapes(None, 128) == ["1x16", "1x128", "8x128"]
    assert bundle_runner.text_shapes(None, 64) == ["1x16"]
    assert bundle_runner.text_shapes(["1x128"], 8) == ["1x8"]


def test_run_py_timing_input_is_at_shapes():
    """run.py's own copy of the timing input (it cannot import kdexport) is at_shape's."""
    names = list(PACKED)
    # the first example shorter than the second: its padding must not be repeated
    x = pack([[101, 5, 102], [101, 7, 8, 9, 102]], [[0, 0, 0], [0, 0, 0, 1, 1]], 12, 0)
    golden = unpack(x, names)  # as package stores it: cut back to the longest example
    assert golden["input_ids"][0].tolist() == [101, 5, 102, 0, 0]
    for batch, seq in ((1, 3), (3, 12), (2, 32)):
        got = bundle_runner.text_feed(golden, f"{batch}x{seq}")
        want = unpack(at_shape(x, batch, seq), names)
        assert list(got) == names
        for name in names:
            assert got[name].dtype == np.int64 and got[name].shape == (batch, seq)
            assert got[name].tolist() == want[name].tolist(), name
    assert bundle_runner.text_feed(golden, "1x7")["input_ids"].tolist() == [
        [101, 5, 102, 101, 5, 102, 101]
    ]


@pytest.fixture(scope="module")
def teacher_bundle(text_run, tmp_path_factory) -> Path:
    """The text run's student and teacher, so that bench measures the speed-up."""
    out = tmp_path_factory.mktemp("ttbundle") / "bundle"
    kdx("package", text_run[0], "--dir", out, "--with-teacher")
    return out


@pytest.mark.backends
def test_bench_times_a_text_bundle_per_shape(teacher_bundle, tmp_path):
    out = tmp_path / "edge.json"
    r = device(
        teacher_bundle,
        "bench",
        "--device",
        "edge",
        *FAST_TEXT_BENCH,
        "--batch-sizes",
        "1x32,2x8",
        "--out",
        out,
        blocked=BLOCKED + ",tokenizers,transformers",
    )
    assert "portable, shape 1x32: student p50" in r.stdout
    result = json.loads(out.read_text())
    assert result["options"]["batch_sizes"] == ["1x32", "2x8"]
    for role in ("student", "teacher"):
        latency = result["results"][role]["latency"]
        assert set(latency) == {"1x32", "2x8"}
        s = latency["2x8"]
        assert s["throughput_per_s"] == pytest.approx(2 * 1000 / s["p50_ms"])
        assert s["tokens_per_s"] == pytest.approx(2 * 8 * 1000 / s["p50_ms"])
    assert set(result["results"]["speedup"]) == {"1x32", "2x8"}
    assert all(v > 0 for v in result["results"]["speedup"].values())
    fleet = json.loads(kdx("import-results", out, "--json").stdout.strip().splitlines()[-1])
    assert [row["batch"] for row in fleet["rows"]] == ["1x32", "2x8"]


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ("8", "--batch-sizes 8: this bundle's model takes text, timed per batch and sequence "
              "length; give BATCHxTOKENS, e.g. 1x32"),
        ("1x16,1x33", "--batch-sizes 1x33: 33 tokens is over this model's max_length 32; give "
                      "at most 1x32"),
    ],
)  # fmt: skip
def test_bench_bad_text_shapes_are_one_line(bundle, sizes, message):
    r = device(bundle, "bench", *FAST_TEXT_BENCH, "--batch-sizes", sizes, code=1)
    one_error(r.stderr, message)


def test_bench_text_shapes_on_an_image_bundle_is_one_line(fast_cli_run, tmp_path):
    image = tmp_path / "image"
    kdx("package", fast_cli_run[0], "--dir", image)
    r = device(image, "bench", *FAST_TEXT_BENCH, "--batch-sizes", "1,1x16", code=1)
    one_error(r.stderr, "--batch-sizes 1x16: BATCHxTOKENS is for a text model's bundle")


@pytest.mark.backends
def test_plan_a_text_run_at_its_shape_with_a_device_and_follow_it(
    text_run, teacher_bundle, tmp_path
):
    run = text_run[0]
    local = placement.plan(run, budget_ms=1e6)
    assert local["batch"] == "1x16"  # the report's headline shape of benchmark.text_shapes
    choice = local["devices"]["local"]["choice"]
    bench = json.loads((run / "benchmark" / "manifest.json").read_text())["checks"]
    measured = bench["targets"][choice["target"]][choice["model"]]["latency"]["1x16"]
    assert choice["p90_ms"] == measured["p90_ms"]
    assert placement._fill_command(run, "local", "benchmark", "student", "x", "1x16") == (
        f"kdexport benchmark {run} --set \"benchmark.text_shapes=['1x16']\""
    )

    edge = tmp_path / "edge.json"
    device(teacher_bundle, "bench", "--device", "edge", *FAST_TEXT_BENCH, "--out", edge)
    timed = json.loads(edge.read_text())["results"]
    r = kdx("plan", run, edge, "--budget-ms", 1e6, "-o", tmp_path / "plan.md", "--json")
    assert "kdexport plan: shape 1x16" in r.stdout
    assert f"Run {run} (student-" in (tmp_path / "plan.md").read_text()
    assert ", shape 1x16: per device" in (tmp_path / "plan.md").read_text()
    planned = json.loads(r.stdout.strip().splitlines()[-1])
    assert planned["batch"] == "1x16"
    pick = planned["devices"]["edge"]["choice"]
    assert pick["target"] == "portable"
    assert pick["p90_ms"] == timed[pick["model"]]["latency"]["1x16"]["p90_ms"]
    fill = {u["target"]: u["command"] for u in planned["devices"]["edge"]["unmeasured"]}
    assert fill["ort-cpu"].endswith("--target ort-cpu --batch-sizes 1x16")

    # A bundle of the plan: run.py follows it at the plan's shape.
    fleet = tmp_path / "fleet"
    kdx("package", run, "--dir", fleet, "--plan", tmp_path / "plan.json")
    again = tmp_path / "again.json"
    r = device(fleet, "bench", "--device", "edge", *FAST_TEXT_BENCH, "--out", again)
    assert f"plan: device edge runs {pick['variant']}" in r.stdout and "at shape 1x16" in r.stdout
    followed = json.loads(again.read_text())
    assert followed["options"]["batch_sizes"] == ["1x16"] and followed["plan"]["batch"] == "1x16"
    assert set(followed["results"][pick["model"]]["latency"]) == {"1x16"}


@pytest.mark.parametrize("batch", ["8", "2x16", "1x"])
def test_plan_a_text_run_at_an_unmeasured_shape_is_one_line(text_run, batch):
    fails(
        "plan", text_run[0], "--batch", batch, "--budget-ms", 5,
        message=f"--batch {batch}: this text run was measured at shapes 1x16 (BATCHxTOKENS)",
    )  # fmt: skip
