"""Streamed image sources (docs/data.md): folders, manifests, WebDataset shards and memory-mapped
arrays give the same inputs and split; views are drawn per item whatever the worker count; the
evaluation transform is the one run.py applies; the teacher cache is memory-mapped."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from kdexport.bundle import runner
from kdexport.data import load_splits
from kdexport.errors import KdxError
from kdexport.losses import CELoss, MixedLabels
from kdexport.modalities.image.augment import View, augmentation
from kdexport.modalities.image.example import write_folder
from kdexport.modalities.inputs import StreamedInputs, read_all
from kdexport.onnxfile import run_reference
from kdexport.train.loop import Pool


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photographs (crops of the ones scikit-learn and matplotlib ship), 12 classes."""
    out = tmp_path_factory.mktemp("photos") / "photos"
    write_folder(out, per_class=10, size=40)
    return out


def _rows(root):
    return [
        {"path": str(f.relative_to(root.parent)), "label": f.parent.name}
        for d in sorted(root.iterdir())
        if d.is_dir()
        for f in sorted(d.glob("*.jpg"))
    ]


def _everything(splits) -> np.ndarray:
    return np.concatenate(
        [np.concatenate(list(read_all(x))) for x in (splits.x_train, splits.x_val, splits.x_test)]
    )


def test_a_folder_a_manifest_and_shards_give_the_same_split_and_pixels(photos, tmp_path):
    import webdataset as wds

    rows = _rows(photos)
    with (photos.parent / "list.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label"])
        w.writeheader()
        w.writerows(rows)
    (photos.parent / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    names = sorted({r["label"] for r in rows})
    shard = tmp_path / "train-000000.tar"
    with wds.TarWriter(str(shard)) as sink:
        for i, r in enumerate(rows):
            data = (photos.parent / r["path"]).read_bytes()
            sink.write({"__key__": f"{i:05d}", "jpg": data, "cls": names.index(r["label"])})
    opts = {"image_size": [24, 24], "image_mode": "RGB", "workers": 2}
    got = {
        src: load_splits(source=str(src), **opts)
        for src in (photos, photos.parent / "list.csv", photos.parent / "list.jsonl", shard)
    }
    first = got[photos]
    assert isinstance(first.x_train, StreamedInputs) and first.labels == names
    for splits in got.values():
        np.testing.assert_array_equal(splits.y_test, first.y_test)
        np.testing.assert_array_equal(_everything(splits), _everything(first))
    assert got[shard].labels == [str(i) for i in range(12)]  # .cls holds ids, not names


def test_a_memory_mapped_array_streams_rows(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (60, 1, 8, 8), np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(60) % 3)
    splits = load_splits(source=str(tmp_path / "x.npy"), workers=1)
    assert isinstance(splits.x_train, StreamedInputs)
    assert splits.preprocessing["memory_mapped"] is True
    rows = np.sort(
        np.concatenate(
            [np.asarray(x.entries) for x in (splits.x_train, splits.x_val, splits.x_test)]
        )
    )
    np.testing.assert_array_equal(rows, np.arange(60))
    got = splits.x_test.take(np.arange(len(splits.x_test)))
    np.testing.assert_allclose(got, x[splits.x_test.entries] / 255, atol=1e-7)


def test_views_are_drawn_per_place_whatever_the_worker_count(photos):
    """An item's random crop and flip come from (seed, its place in the epoch), so a run reads
    the same views with 0 or 2 workers and when resumed."""
    splits = load_splits(source=str(photos), image_size=[24, 24], image_mode="RGB", workers=0)
    y = torch.from_numpy(splits.y_train)
    order = [torch.arange(8), torch.arange(8, 16)]
    view = View((0.2, 1.0))
    views = []
    for workers in (0, 2):
        splits.x_train.workers = workers
        pool = Pool(splits.x_train, y)
        views.append([b[0] for b in pool.batches(order, torch.device("cpu"), view, seed=7)])
    for a, b in zip(*views, strict=True):
        torch.testing.assert_close(a, b)
    plain = [b[0] for b in Pool(splits.x_train, y).batches(order, torch.device("cpu"))]
    assert not torch.equal(views[0][0], plain[0])  # a view is not the evaluation image


def test_crop_fraction_is_the_centre_crop_run_py_applies(photos):
    """The evaluation transform (resize to cover size / crop_fraction, crop the centre) is the
    same on the host and in a bundle."""
    f = sorted((photos / "china-top-left").glob("*.jpg"))[0]
    splits = load_splits(
        source=str(photos), image_size=[16, 20], image_mode="RGB", crop_fraction=0.875, workers=0
    )
    assert splits.preprocessing["crop_fraction"] == 0.875
    index = list(splits.x_train.entries).index(str(f)) if str(f) in splits.x_train.entries else None
    x = splits.x_train if index is not None else splits.x_test
    index = index if index is not None else list(x.entries).index(str(f))
    host = x.take([index])[0]
    spec = {"name": "input", "dtype": "float32", "shape": ["batch", 3, 16, 20]}
    device = runner.load_input(f, spec, {"image_scale": 1 / 255, "crop_fraction": 0.875})[0]
    np.testing.assert_allclose(host, device, atol=1e-6)
    with Image.open(f) as img:
        w, h = img.size
    box = runner.centre_box(w, h, (16, 20), 0.875)
    assert box[0] > 0 and box[1] > 0  # the border is cut


def test_augmentations_keep_shapes_and_stay_in_range():
    x = torch.rand(4, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    for name in ("crop-flip", "crop-flip-jitter", "randaugment"):
        aug = augmentation(name, {"mean": [0.5], "std": [0.25]})
        assert aug.view is not None
        out = aug.on_batch(streamed=False)(x, gen)
        assert out.shape == x.shape and torch.isfinite(out).all()
        streamed = aug.on_batch(streamed=True)
        if name == "crop-flip":
            assert streamed is None  # the view was drawn by the reader: nothing left to do
        else:
            assert streamed(x, gen).shape == x.shape
    for mix in ({"mixup": 0.2}, {"cutmix": 1.0}, {"mixup": 0.2, "cutmix": 1.0}):
        y = torch.tensor([0, 1, 2, -1])
        mixed, labels = augmentation("crop-flip", mix).mix(x, y, gen)
        assert mixed.shape == x.shape and isinstance(labels, MixedLabels)
        assert torch.equal(labels.b, y.flip(0)) and ((labels.lam >= 0) & (labels.lam <= 1)).all()
    grey = torch.rand(4, 1, 16, 16)
    assert augmentation("crop-flip-jitter", {}).on_batch(False)(grey, gen).shape == grey.shape


def test_a_mixed_batch_mixes_the_label_terms():
    s = torch.randn(3, 4)
    a, b, lam = torch.tensor([0, 1, -1]), torch.tensor([2, 3, 0]), torch.tensor([0.7, 0.2, 0.5])
    got = CELoss()(s, None, MixedLabels(a, b, lam))
    ce = torch.nn.functional.cross_entropy
    want = (0.7 * ce(s[:1], a[:1]) + 0.3 * ce(s[:1], b[:1]) + 0.2 * ce(s[1:2], a[1:2])) / 2
    want = want + 0.8 * ce(s[1:2], b[1:2]) / 2
    torch.testing.assert_close(got, want)


def test_streamed_training_end_to_end_records_and_resumes(photos, tmp_path):
    """distill-and-export on a streamed folder with crop-flip: the teacher runs on the student's
    view (no cache); without augmentation the cache is a memory-mapped .npy."""
    from conftest import QUICK_TIMING, assert_top_class_matches, kdx, predict_folder

    out = tmp_path / "run"
    sets = [
        f"data.source='{photos}'",
        "data.image_size=[24, 24]",
        "data.image_mode='RGB'",
        "data.workers=1",
        "data.crop_fraction=0.875",
        "teacher.epochs=1",
        "distill.epochs=1",
        "distill.augment='crop-flip-jitter'",
        "data.mixup=0.2",
        "data.cutmix=1.0",
        "compile.targets=['ort-cpu']",
        "benchmark.batch_sizes=[1]",
        *QUICK_TIMING,
    ]
    kdx("distill-and-export", "--out", out, *(a for s in sets for a in ("--set", s)))
    assert not list((out / "cache").glob("teacher-*.logits.npy"))
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert manifest["checks"]["preprocessing"]["crop_fraction"] == 0.875
    history = json.loads((out / "student" / "history.json").read_text())
    assert history[0]["data"] == "streamed" and history[0]["teacher_s"] > 0
    shares = json.loads((out / "student" / "manifest.json").read_text())["checks"]["time_shares"]
    assert 0 < shares["teacher"] < 1 and 0 <= shares["wait"] < 1
    # The bundle's run.py reads a folder of photos with the recorded evaluation transform and
    # the same decoder: its probabilities are the host pipeline's on the exported student.
    bundle = tmp_path / "bundle"
    kdx("package", out, "--dir", bundle)
    pre = json.loads((bundle / "manifest.json").read_text())["preprocessing"]
    assert pre["crop_fraction"] == 0.875 and pre["resize"] == [24, 24]
    files = sorted((photos / "hopper-top-right").glob("*.jpg"))[:4]
    predictions = predict_folder(bundle, files, tmp_path / "some photos")
    splits = load_splits(
        source=str(photos), image_size=[24, 24], image_mode="RGB", crop_fraction=0.875, workers=0
    )
    inputs = {
        str(e): (x, i)
        for x in (splits.x_train, splits.x_val, splits.x_test)
        for i, e in enumerate(x.entries)
    }
    host = np.concatenate([inputs[str(f)][0].take([inputs[str(f)][1]]) for f in files])
    logits = run_reference(out / "export" / "student.onnx", {"input": host})
    assert_top_class_matches(logits, predictions)


def test_a_manifest_row_naming_a_missing_file_and_a_shard_without_label(photos, tmp_path):
    import webdataset as wds

    (tmp_path / "list.csv").write_text("path,label\nnowhere.jpg,a\n")
    with pytest.raises(KdxError, match=r"row 2 names .*nowhere.jpg, which does not exist"):
        load_splits(source=str(tmp_path / "list.csv"))
    shard = tmp_path / "s.tar"
    data = next(photos.glob("*/*.jpg")).read_bytes()
    with wds.TarWriter(str(shard)) as sink:
        sink.write({"__key__": "a", "jpg": data, "cls": 0})
        sink.write({"__key__": "b", "jpg": data})
    with pytest.raises(KdxError, match=r"s.tar: sample 'b' has no label"):
        load_splits(source=str(shard))
