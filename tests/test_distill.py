"""The training loop: feature losses and their adapters, the teacher-output cache, the labeled
share, early stopping, schedules, augmentation, pre-flight checks and a non-finite loss."""

import shutil

import numpy as np
import pytest
import torch
from conftest import fails, kdx

from kdexport.context import Run
from kdexport.data import load_splits
from kdexport.distill import distill, student_pool
from kdexport.errors import KdxError
from kdexport.modalities.image.augment import shift
from kdexport.modalities.inputs import ArrayInputs
from kdexport.pipeline import load_recipe
from kdexport.teacher import load_teacher, train_teacher
from kdexport.train.loop import AUTO_DEVICE_SHARE, Pool, _lr_factor, predict
from kdexport.zoo import create_model

TINY = [
    "teacher.model=zoo:mlp-tiny",
    "teacher.epochs=3",
    "teacher.device='cpu'",
    "distill.student=zoo:mlp-tiny",
    "distill.epochs=2",
    "distill.device='cpu'",
]
MODELS = """
import torch
from torch import nn

def conv(num_classes=10, in_channels=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(8 * 16, num_classes),
    )

class Inf(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)
    def forward(self, x):
        return self.lin(x.flatten(1)) * float("inf")

def inf():
    return Inf()

def three():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

class Stuck(nn.Sequential):
    def train(self, mode=True):  # never leaves training mode
        return super().train(True)

def stuck(num_classes=10):
    return Stuck(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, num_classes))
"""


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A run directory with a small trained teacher (mlp-tiny, 3 epochs) and its recipe."""
    run = tmp_path_factory.mktemp("kd") / "run"
    kdx("train-teacher", run, *(a for s in TINY for a in ("--set", s)))
    return run


@pytest.fixture
def run(teacher_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(teacher_run, dest)
    return dest


@pytest.fixture
def models(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    return path


def _recipe(run, *sets):
    return load_recipe(run / "recipe.toml", list(sets))


@pytest.mark.parametrize(("loss", "weight"), [("hint", 1.0), ("attention", 500.0)])
def test_feature_loss_trains_and_the_adapter_is_not_exported(tmp_path, models, loss, weight):
    run = tmp_path / "run"
    sets = [
        "teacher.model=zoo:digits-cnn-small",
        "teacher.epochs=1",
        f"distill.student={models}:conv",
        f"distill.feature_loss='{loss}'",
        f"distill.feature_weight={weight}",
        "distill.student_layer='1'",  # (8, 8, 8)
        "distill.teacher_layer='2'",  # (16, 8, 8): a 1x1 adapter maps 8 -> 16 channels
        "distill.epochs=2",
    ]
    r = load_recipe(overrides=sets)
    train_teacher(Run(run, r["data"]), **r["teacher"])
    art = distill(Run(run, r["data"]), **r["distill"])
    history = (art.path / "history.json").read_text()
    assert f'"{loss}"' in history and '"kd"' in history
    saved = torch.load(art.file("model.pt"), weights_only=True)
    assert set(saved) == set(create_model(f"{models}:conv", 10, 1).state_dict())


def test_feature_layers_are_checked_before_training(tmp_path, models):
    base = ["--out", tmp_path / "run", "--set", f"distill.student={models}:conv"]
    base += ["--set", "distill.feature_loss='hint'", "--set", "teacher.model=zoo:digits-cnn-small"]
    fails(
        "distill-and-export",
        *base,
        "--set",
        "distill.student_layer='9'",
        "--set",
        "distill.teacher_layer='2'",
        message="distill.student_layer '9' is not a layer of the student; its layers: '0', '1'",
    )
    fails(
        "distill-and-export",
        *base,
        "--set",
        "distill.student_layer='2'",  # after the max-pool: (8, 4, 4)
        "--set",
        "distill.teacher_layer='2'",
        message="distill.feature_loss 'hint': spatial sizes differ: (8, 4, 4) (student)",
    )
    assert not (tmp_path / "run" / "teacher").exists()


def test_teacher_outputs_are_cached_once_and_keyed_by_the_teacher(run):
    r = _recipe(run)
    distill(Run(run, r["data"]), **r["distill"])
    (cached,) = (run / "cache").glob("teacher-*.logits.npy")
    mtime = cached.stat().st_mtime_ns
    splits = load_splits(**r["data"])
    teacher, _ = load_teacher(Run(run, r["data"]))
    logits = np.load(cached, mmap_mode="r")
    np.testing.assert_allclose(logits, predict(teacher, splits.x_train), atol=1e-6)
    distill(Run(run, r["data"]), **{**r["distill"], "seed": 1})
    assert cached.stat().st_mtime_ns == mtime  # reused, not recomputed
    distill(
        Run(run, r["data"]), **{**r["distill"], "augment": "shift"}
    )  # the teacher runs per batch
    assert len(list((run / "cache").glob("teacher-*.logits.npy"))) == 1
    train_teacher(Run(run, r["data"]), **{**r["teacher"], "epochs": 1})
    distill(Run(run, r["data"]), **r["distill"])
    assert len(list((run / "cache").glob("teacher-*.logits.npy"))) == 2  # a new teacher, a new key


def test_labeled_share_and_transfer_pool(tmp_path):
    np.savez(tmp_path / "u.npz", x=np.zeros((50, 1, 8, 8), np.float32))
    splits = load_splits(transfer=str(tmp_path / "u.npz"))
    opts = {"label_fraction": 0.1}
    kd = student_pool(splits, opts, 0, scratch=False)
    n = len(splits.y_train)
    assert len(kd.y) == n + 50 and (kd.y[n:] == -1).all()
    labeled = int((kd.y >= 0).sum())
    assert abs(labeled - 0.1 * n) <= 10
    scratch = student_pool(splits, opts, 0, scratch=True)
    assert len(scratch.y) == labeled and (scratch.y >= 0).all()


def test_label_scarce_student_trains_on_the_teacher_alone(run):
    r = _recipe(run, "distill.label_fraction=0.1")
    art = distill(Run(run, r["data"]), **r["distill"])
    assert art.parameters["label_fraction"] == 0.1
    assert art.checks["epochs_run"] == 2
    assert art.checks["data_placement"] == "cpu"


def test_early_stopping(run):
    r = _recipe(run, "distill.epochs=20", "distill.patience=2", "distill.lr=1e-9")
    assert distill(Run(run, r["data"]), **r["distill"]).checks["epochs_run"] == 3


def test_schedules():
    cosine, step = _lr_factor("cosine", 100), _lr_factor("step", 100)
    assert [cosine(s) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0])
    assert [step(s) for s in (0, 49, 50, 75, 99)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])


def test_step_schedule_and_augmentation_train(run):
    r = _recipe(run, "distill.schedule='step'", "distill.augment='shift'")
    assert distill(Run(run, r["data"]), **r["distill"]).checks["epochs_run"] == 2


def test_shift_moves_each_sample_by_at_most_one_pixel():
    x = torch.rand(32, 3, 8, 8)
    out = shift(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    moves = set()
    for i in range(len(x)):
        (move,) = [
            (dy, dx)
            for dy in range(3)
            for dx in range(3)
            if torch.equal(padded[i, :, dy : dy + 8, dx : dx + 8], out[i])
        ]
        moves.add(move)
    assert len(moves) > 4  # random moves, each sample its own


def test_non_finite_loss_names_the_step_and_term(run, models):
    fails(
        "distill",
        run,
        "--set",
        f"distill.student={models}:inf",
        message="distill: the loss is not finite (term 'ce') at epoch 1, step 1 of",
    )
    assert not (run / "student").exists()


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["distill.student={models}:three"],
            "teacher outputs (4, 10), student (4, 3); both need 10",
        ),
        (
            ["teacher.model={models}:stuck"],
            "the teacher's outputs for a sample change with the rest",
        ),
        (["distill.precision='bf16'"], "precision = 'bf16' (mixed precision) needs a CUDA GPU"),
    ],
)
def test_preflight_errors(tmp_path, models, sets, message):
    if "bf16" in sets[0] and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: bf16 is allowed")
    args = [a for s in [*TINY, *sets] for a in ("--set", s.format(models=models))]
    fails("distill-and-export", "--out", tmp_path / "run", *args, message=message)


def test_cuda_device_without_a_gpu(run):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    r = _recipe(run, "distill.device='cuda'")
    with pytest.raises(KdxError, match="device = 'cuda' but PyTorch sees no CUDA GPU"):
        distill(Run(run, r["data"]), **r["distill"])


def test_data_placement_on_a_gpu_follows_the_free_memory(monkeypatch):
    """ "auto" keeps data larger than a quarter of the GPU's free memory on the host (pinned per
    batch); on the CPU the data stays where it is."""
    x = ArrayInputs(np.zeros((1000, 64), np.float32))
    pool = Pool(x, torch.zeros(1000, dtype=torch.int64))  # 264,000 bytes
    size = x.array.nbytes + pool.y.nbytes
    free = size / AUTO_DEVICE_SHARE - 1
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 10 * free))
    pool.place(torch.device("cuda", 0), "auto")
    assert pool.placement == "pinned host"
    pool.place(torch.device("cpu"), "device")
    assert pool.placement == "cpu"
    ((x, y, logits, feature),) = pool.batches([torch.tensor([3, 1])], torch.device("cpu"))
    assert x.shape == (2, 64) and y.shape == (2,) and logits is None and feature is None


def _distill_on_cuda(run, *sets):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    r = _recipe(run, "distill.device='cuda'", *sets)
    return distill(Run(run, r["data"]), **r["distill"])


@pytest.mark.gpu
@pytest.mark.parametrize("placement", ["device", "host"])
def test_data_placement_on_cuda(run, placement):
    art = _distill_on_cuda(run, f"distill.data_placement='{placement}'")
    assert art.checks["data_placement"] == {"device": "device", "host": "pinned host"}[placement]
    assert art.checks["test_accuracy"] > 0.5


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(run, precision):
    art = _distill_on_cuda(run, f"distill.precision='{precision}'")
    assert art.checks["test_accuracy"] > 0.5
