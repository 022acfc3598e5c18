"""The text feature losses from the recipe (issue 14): ``distill.feature_loss = "tinybert_hidden"``
or ``"minilm_attention"`` trains a text student through the CLI, weighted by ``feature_weight``,
with the teacher run per batch; mistakes are one line at pre-flight, before any training; the
image feature losses are routed as before. One tiny BERT teacher (2 layers, hidden 32, 2
heads), trained one epoch on 200 synthetic reviews, shared by the module."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import fails, kdx

from kdexport.data import load_splits
from kdexport.losses import HintLoss, Objective, TinyBERTHiddenLoss, term_weights
from kdexport.modalities.text.classifier import student, text_model
from kdexport.modalities.text.features import TappedText, TextTap, attention_dropouts
from kdexport.modalities.text.synthetic import CLASSES, generate, write_reviews
from kdexport.modalities.text.tiny import tiny_teacher
from kdexport.pipeline import load_recipe
from kdexport.zoo import Parent

STUDENT = "distill.student=hf-student:num_hidden_layers=1"


def _sets(*sets: str) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A run directory of the text recipe with its teacher trained (1 epoch)."""
    base = tmp_path_factory.mktemp("text")
    data = write_reviews(base / "reviews.csv", n=200)
    teacher = tiny_teacher(base / "teacher", [t for t, _ in generate(200)], list(CLASSES))
    sets = [f"data.source={data}", f"teacher.model=hf:{teacher}", "teacher.epochs=1", STUDENT]
    run = base / "run"
    kdx("train-teacher", run, "--recipe", "text", *_sets(*sets, "distill.epochs=1"))
    return run, sets


@pytest.fixture
def run(text_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(text_run[0], dest)
    return dest


@pytest.mark.parametrize(
    ("loss", "extra"),
    [
        ("tinybert_hidden", []),
        # a narrower student: minilm needs the same heads only, not the same hidden size
        ("minilm_attention", ["distill.student=hf-student:num_hidden_layers=1,hidden_size=16"]),
    ],
)
def test_a_text_feature_loss_trains(run, loss, extra):
    caches = set((run / "cache").glob("teacher-*.npz"))
    sets = ["distill.epochs=1", f"distill.feature_loss={loss}", "distill.feature_weight=3.0"]
    kdx("distill", run, *_sets(*sets, *extra))
    history = json.loads((run / "student" / "history.json").read_text())
    terms = history[-1]
    assert {"ce", "kd", loss} <= set(terms)
    assert math.isfinite(terms[loss]) and terms[loss] > 0
    # the teacher ran per batch: no cache of its outputs was written
    assert set((run / "cache").glob("teacher-*.npz")) == caches
    # the student learnt: its weights left those it started from (the same seed)
    r = load_recipe(run / "recipe.toml", [])
    spec = r["distill"]["student"]
    teacher = text_model(r["teacher"]["model"], len(CLASSES))
    torch.manual_seed(r["distill"]["seed"])
    start = student(Parent(teacher), spec, r["distill"]["seed"])[0].state_dict()
    saved = torch.load(run / "student" / "model.pt", weights_only=True)
    assert set(saved) == set(start)  # TinyBERT's W is not part of the student
    moved = [k for k in saved if not torch.equal(saved[k], start[k])]
    assert any(".encoder.layer.0." in k for k in moved), moved


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            [
                "distill.feature_loss=minilm_attention",
                "distill.student=hf-student:num_attention_heads=4",
            ],
            "distill.feature_loss 'minilm_attention': needs the same number of attention heads "
            "(student 4, teacher 2)",
        ),
        (
            [
                "distill.feature_loss=tinybert_hidden",
                "distill.student=hf-student:num_hidden_layers=3",
            ],
            "distill.feature_loss 'tinybert_hidden': the teacher's 2 layers do not map onto the "
            "student's 3 uniformly",
        ),
        (
            ["distill.feature_loss=tinybert_hidden", "distill.student_layer=bert"],
            "distill.student_layer = 'bert': leave it empty with feature_loss 'tinybert_hidden'",
        ),
    ],
)
def test_text_loss_mistakes_are_one_line_before_training(text_run, tmp_path, sets, message):
    out = tmp_path / "run"
    fails(
        "distill-and-export",
        "--out",
        out,
        "--recipe",
        "text",
        *_sets(*text_run[1], *sets),
        message=message,
    )
    assert not (out / "teacher").exists()


def test_a_text_loss_needs_text_models(tmp_path):
    out = tmp_path / "run"
    sets = ["teacher.model=zoo:mlp-tiny", "distill.student=zoo:mlp-tiny"]
    fails(
        "distill-and-export",
        "--out",
        out,
        *_sets(*sets, "distill.feature_loss=minilm_attention"),
        message="distill.feature_loss 'minilm_attention' is not for image models",
    )
    assert not (out / "teacher").exists()


def test_the_tap_captures_and_restores(text_run):
    r = load_recipe(text_run[0] / "recipe.toml", [])
    teacher = text_model(r["teacher"]["model"], len(CLASSES)).train()
    x = torch.from_numpy(load_splits(**r["data"]).x_val.head(3))
    dropouts = attention_dropouts(teacher.hf)
    assert len(dropouts) == 2 and all(d.p > 0 for d in dropouts)
    tap = TextTap(teacher, "attentions", "teacher")
    assert tap.value is None and all(d.p == 0 for d in dropouts)
    teacher(x)
    value = tap.value
    length = int(x[:, 1].sum(1).max())  # trimmed to the longest example
    assert value.attention_mask.shape == (3, length)
    assert [a.shape for a in value.states] == [(3, 2, length, length)] * 2
    # no dropout on the probabilities: every real query row sums to 1 over the real keys
    rows = value.states[-1].sum(-1)[value.attention_mask[:, None, :].expand(-1, 2, -1) > 0]
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
    with tap.paused():  # validation: nothing kept
        teacher(x)
        assert teacher.captured is None
    teacher(x)
    assert tap.value is not None
    tap.close()
    assert all(d.p > 0 for d in dropouts) and teacher.captured is None
    assert teacher.capture == frozenset()


def test_feature_weight_weights_the_text_term_and_image_terms_are_routed_as_before():
    weights = term_weights("kd", "alpha", 0.5, "tinybert_hidden", 3.0)
    assert weights == {"ce": 0.5, "kd": 0.5, "tinybert_hidden": 3.0}
    objective = Objective({"tinybert_hidden": 3.0}, 1.0, (4, 4, 1, 1))
    h = (torch.ones(2, 5, 4), torch.ones(2, 5, 4))
    mask = torch.tensor([[1] * 5, [1, 1, 0, 0, 0]])
    s, t = TappedText(h, mask), TappedText(tuple(torch.zeros(2, 5, 4) for _ in h), mask)
    total, terms = objective(None, None, None, s, t)
    alone = TinyBERTHiddenLoss(4, 4, 1, 1)
    alone.load_state_dict(objective.terms["tinybert_hidden"].state_dict())
    assert total.item() == pytest.approx(3.0 * alone(h, t.states, None, mask).item())
    assert terms == {"tinybert_hidden": pytest.approx(total.item() / 3.0)}
    # an image feature term still gets the tapped layers' outputs as they are
    objective = Objective({"hint": 2.0}, 1.0, ((3,), (3,)))
    u, v = torch.randn(4, 3), torch.randn(4, 3)
    hint = HintLoss((3,), (3,))
    hint.load_state_dict(objective.terms["hint"].state_dict())
    total, _ = objective(None, None, None, u, v)
    assert total.item() == pytest.approx(2.0 * hint(u, v, None).item())


def test_the_scratch_baseline_starts_from_random_weights(text_run):
    """KD's student starts from the teacher's layers (DistilBERT's rule) where shapes allow;
    the baseline it is compared with is trained from scratch: no teacher weights either."""
    from kdexport.distill import build_student

    teacher_spec = next(s for s in text_run[1] if s.startswith("teacher.model="))
    teacher = text_model(teacher_spec.partition("=")[2], len(CLASSES))
    opts = {"student": STUDENT.partition("=")[2], "seed": 0, "checkpoint": ""}
    kd = build_student(opts, None, Parent(teacher))
    scratch = build_student(opts, None, Parent(teacher), scratch=True)
    assert kd.init_record["init"] == "every-k-th-layer"
    assert scratch.init_record["init"] == "random"
    assert "from scratch" in scratch.init_record["reason"]
    name = "bert.embeddings.word_embeddings.weight"
    t = teacher.hf.state_dict()[name]
    assert torch.equal(kd.hf.state_dict()[name], t)
    assert not torch.equal(scratch.hf.state_dict()[name], t)
