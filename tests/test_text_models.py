"""Text model specs (kdexport.modalities.text.models, kdexport.modalities.text.tiny): hf:PATH and hf:ORG/NAME load
offline, the student is built from the teacher's config and starts from every k-th teacher layer
when shapes allow, and each mistake is one line. Tiny BERTs only (2-4 layers, hidden 32)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from kdexport.errors import KdxError
from kdexport.modalities.text.models import (
    build_student,
    load_text_model,
    require_text_extra,
    save_text_model,
)
from kdexport.modalities.text.synthetic import CLASSES, generate
from kdexport.modalities.text.tiny import tiny_teacher

TEXTS = [t for t, _ in generate(200, seed=3)]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A 4-layer tiny BERT (so that a 2-layer student takes every 2nd layer)."""
    folder = tmp_path_factory.mktemp("teacher") / "bert"
    return tiny_teacher(folder, TEXTS, list(CLASSES), vocab_size=200, num_hidden_layers=4)


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return load_text_model(f"hf:{teacher_dir}")


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(TEXTS[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_a_saved_teacher_round_trips(teacher, tmp_path):
    assert teacher.labels == list(CLASSES)
    assert teacher.tokenizer.is_fast and teacher.max_positions == 128
    assert teacher.info == {"found_in": "folder", "new_weights": [], "model_type": "bert"}
    again = load_text_model(
        f"hf:{save_text_model(teacher.model, teacher.tokenizer, tmp_path / 'b')}"
    )
    assert (tmp_path / "b" / "tokenizer.json").is_file()
    assert torch.equal(
        _logits(teacher.model, teacher.tokenizer), _logits(again.model, again.tokenizer)
    )
    assert again.tokenizer("not bad")["input_ids"] == teacher.tokenizer("not bad")["input_ids"]


def test_new_labels_replace_the_head(teacher_dir):
    loaded = load_text_model(f"hf:{teacher_dir}", labels=["no", "yes"])
    assert loaded.labels == ["no", "yes"]
    assert loaded.info["new_weights"] == ["classifier.bias", "classifier.weight"]


def test_an_hf_name_resolves_through_the_local_cache_only(teacher_dir, tmp_path, monkeypatch):
    import huggingface_hub

    repo = tmp_path / "hub" / "models--kdx-org--tiny-bert"
    shutil.copytree(teacher_dir, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = load_text_model("hf:kdx-org/tiny-bert")
    assert loaded.info["found_in"] == "hub cache" and loaded.labels == list(CLASSES)
    with pytest.raises(KdxError) as e:
        load_text_model("hf:kdx-org/not-cached")
    assert "hf download kdx-org/not-cached" in _one_line(e) and "never downloads" in str(e.value)


def test_every_kth_teacher_layer_initialises_the_student(teacher):
    student, record = build_student(teacher, {"num_hidden_layers": 2})
    assert record["init"] == "every-k-th-layer" and record["k"] == 2
    assert record["layers"] == {"0": 0, "1": 2}
    assert record["copied"] == ["bert.embeddings", "bert.pooler", "classifier"]
    s, t = student.state_dict(), teacher.model.state_dict()
    for j, i in ((0, 0), (1, 2)):
        for name, value in s.items():
            if f".layer.{j}." in name:
                assert torch.equal(value, t[name.replace(f".layer.{j}.", f".layer.{i}.")]), name
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(s[embeddings], t[embeddings])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])
    assert not torch.equal(
        s["bert.encoder.layer.1.output.dense.weight"], t["bert.encoder.layer.1.output.dense.weight"]
    )
    assert record["parameters"]["student"] < record["parameters"]["teacher"]
    assert student.config.id2label == teacher.model.config.id2label


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"hidden_size": 64}, "random init: hidden size differs (teacher 32, student 64)"),
        ({"num_hidden_layers": 6}, "random init: more layers than the teacher (6 > 4)"),
        (
            {"num_hidden_layers": 1, "intermediate_size": 16},
            "random init: bert.encoder.layer.0.intermediate.dense.weight",
        ),
    ],
)
def test_a_student_whose_shapes_differ_starts_random(teacher, overrides, reason):
    student, record = build_student(teacher, overrides)
    assert record["init"] == "random" and record["reason"].startswith(reason)
    t_weights = teacher.model.state_dict()["bert.embeddings.word_embeddings.weight"]
    s_weights = student.state_dict()["bert.embeddings.word_embeddings.weight"]
    assert s_weights.shape != t_weights.shape or not torch.equal(s_weights, t_weights)


def test_a_student_from_an_hf_config_file(teacher, tmp_path):
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=200,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    config.save_pretrained(tmp_path / "cfg")
    student, record = build_student(teacher, f"hf-config:{tmp_path / 'cfg'}")
    assert student.config.hidden_size == 16 and student.config.num_labels == len(CLASSES)
    assert record["reason"] == "random init: hidden size differs (teacher 32, student 16)"
    (tmp_path / "small.json").write_text(json.dumps({**config.to_dict(), "vocab_size": 50}))
    with pytest.raises(
        KdxError, match="student vocab_size 50 is smaller than the teacher's tokenizer"
    ):
        build_student(teacher, f"hf-config:{tmp_path / 'small.json'}")


@pytest.mark.parametrize(
    ("student", "message"),
    [
        ({"num_layers": 1}, "bert has no key 'num_layers'; close: num_hidden_layers"),
        ({"hiden_size": 16}, "no key 'hiden_size'; close: hidden_size"),
        ({"num_labels": 2}, "'num_labels' is the teacher's"),
        (
            {"hidden_size": 30, "num_attention_heads": 4},
            "student config: The hidden size (30) is not a multiple",
        ),
        ("zoo:digits-cnn-small", "use hf-config:PATH or a table of config overrides"),
        ("hf-config:/nonexistent/config.json", "cannot read /nonexistent/config.json"),
    ],
)
def test_student_mistakes_are_one_line(teacher, student, message):
    with pytest.raises(KdxError) as e:
        build_student(teacher, student)
    assert message in _one_line(e)


def test_teacher_mistakes_are_one_line(teacher_dir, tmp_path):
    no_tokenizer = shutil.copytree(teacher_dir, tmp_path / "no-tok")
    (no_tokenizer / "tokenizer.json").unlink()
    cases = {
        f"hf:{no_tokenizer}": "no tokenizer.json in",
        f"hf:{tmp_path}": "has no config.json",
        "hf:./no/such/folder": "no such folder",
        f"hf:{teacher_dir / 'config.json'}": "is a file; give the folder",
        "hf:": "use hf:PATH",
    }
    for spec, message in cases.items():
        with pytest.raises(KdxError) as e:
            load_text_model(spec)
        assert message in _one_line(e), spec


def test_without_transformers_the_hint_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(KdxError) as e:
        require_text_extra()
    assert "pip install 'kdexport[text]'" in _one_line(e)
    with pytest.raises(KdxError, match="kdexport\\[text\\]"):
        load_text_model("hf:anything")


def test_importing_the_text_package_loads_no_transformers():
    code = (
        "import sys, kdexport.modalities.text.models, kdexport.modalities.text.data, kdexport.modalities.text.synthetic, "
        "kdexport.modalities.text.tiny; print(sorted({'transformers', 'tokenizers', 'torch'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
