"""torchvision: and timm: model specs (kdexport.modalities.image.families).

The tests marked ``vision`` need torchvision and timm (tools/test-vision.sh runs them in
.venv-vision); the others run anywhere: spec parsing and the one-line "needs the vision extra".
"""

import sys

import numpy as np
import pytest
import torch
from conftest import fails

from kdexport.backends.profiles import load_target
from kdexport.compile import compile_model
from kdexport.errors import KdxError
from kdexport.export import export_onnx, predict
from kdexport.modalities.image.families import head_path, import_error, parse_spec
from kdexport.zoo import create_model

VISION = [pytest.mark.vision]
OPTS = {"opset": 18, "example_batch": 2, "tolerance": 1e-4, "external_data_mb": 1800}
# One per family users deploy, at the smallest input each takes (a ViT: 2x2 patches of 16).
FAMILIES = {
    "torchvision:resnet18": 32,
    "torchvision:mobilenet_v3_small": 32,
    "torchvision:efficientnet_b0": 32,
    "timm:vit_tiny_patch16_224?img_size=32": 32,
}


def test_spec_options_parse():
    assert parse_spec("torchvision:resnet18") == ("torchvision", "resnet18", {})
    spec = "timm:vit_tiny_patch16_224?img_size=64&weights=w/vit.safetensors"
    assert parse_spec(spec) == (
        "timm",
        "vit_tiny_patch16_224",
        {"img_size": "64", "weights": "w/vit.safetensors"},
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("torchvision:resnet18?img_size=64", "'img_size=64' is not an option of torchvision:"),
        ("timm:resnet18?weights", "give weights=VALUE or img_size=VALUE after '?'"),
        ("torchvision:?weights=a.pth", "name the architecture"),
    ],
)
def test_bad_spec_options_are_one_line(spec, message):
    with pytest.raises(KdxError, match=message):
        parse_spec(spec)


def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed
    fails(
        "train-teacher",
        "run",
        "--set",
        "teacher.model=torchvision:resnet18",
        message="needs the vision extra: pip install 'kdexport[vision]'",
    )


def test_torch_mismatch_names_the_operator():
    error = RuntimeError("operator torchvision::nms does not exist")
    text = str(import_error("torchvision:resnet18", "torchvision", error))
    assert "operator torchvision::nms does not exist" in text
    assert "torchvision release made for this torch build" in text


def _warm_batchnorm(model, x):
    """BatchNorm statistics of ``x`` itself (the rest in eval mode: no dropout or stochastic
    depth), so the untrained model's outputs differ between inputs and parity means something."""
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average: after one pass, the batch's statistics
            m.reset_running_stats()
            m.train()
    with torch.no_grad():
        model(torch.from_numpy(x))
        model.eval()
        # Logits at most 1 in size, as the 1e-4 bound is absolute: the head scaled (EfficientNet's
        # exact statistics give logits of 20 and more, where float32 rounding alone nears 1e-4).
        head = model.get_submodule(head_path(model))
        scale = float(model(torch.from_numpy(x)).abs().max())
        head.weight /= scale
        head.bias /= scale
    return model


@pytest.mark.vision
@pytest.mark.backends
@pytest.mark.parametrize("spec", sorted(FAMILIES))
def test_family_exports_and_matches_on_cpu_targets(spec, tmp_path):
    torch.manual_seed(0)
    size = FAMILIES[spec]
    x = np.random.default_rng(0).random((8, 3, size, size), dtype=np.float32)
    model = _warm_batchnorm(create_model(spec, 5, 3), x)
    path = tmp_path / "model.onnx"
    facts = export_onnx(model, path, torch.from_numpy(x[:2]), x, OPTS, {"role": spec})
    assert facts["exporter"] == "dynamo"
    sample = {"x": x, "y": np.zeros(len(x), np.int64), "model": predict(model, x)}
    assert sample["model"].shape == (8, 5)
    assert sample["model"].std(0).mean() > 1e-3  # not a constant output, which any runtime matches
    for target in ("ort-cpu", "openvino-cpu"):
        out = tmp_path / target
        out.mkdir()
        result = compile_model(path, out, "model", load_target(target), sample, None)
        assert result["parity"]["passed"], (target, result["parity"]["summary"])
        assert result["parity"]["max_abs_diff"] <= 1e-4, (target, result["parity"]["summary"])


@pytest.fixture(scope="module")
def imagenet_resnet(tmp_path_factory):
    """A 1000-class resnet18 state_dict on disk (random weights: nothing is downloaded)."""
    import torchvision

    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return model.eval(), path


@pytest.mark.vision
def test_weights_load_and_head_is_replaced(imagenet_resnet):
    source, path = imagenet_resnet
    model = create_model(f"torchvision:resnet18?weights={path}", 5, 3)
    assert model.fc.out_features == 5
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_mean, source.layer4[1].bn2.running_mean)
    assert model.init_record == {
        "init": "weights",
        "weights": str(path),
        "head": {"module": "fc", "from_classes": 1000, "to_classes": 5},
    }
    kept = create_model(f"torchvision:resnet18?weights={path}", 1000, 3)
    assert "head" not in kept.init_record and torch.equal(kept.fc.weight, source.fc.weight)


@pytest.mark.vision
def test_grey_input_is_the_rgb_model_on_three_equal_channels(imagenet_resnet):
    source, path = imagenet_resnet
    grey = create_model(f"torchvision:resnet18?weights={path}", 1000, 1)
    assert grey.init_record["input_conv"]["module"] == "conv1"
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), source(x.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


@pytest.mark.vision
def test_safetensors_weights_into_timm(tmp_path):
    from safetensors.torch import save_file

    spec = "timm:vit_tiny_patch16_224?img_size=32"
    source = create_model(spec, 10, 3)
    save_file(source.state_dict(), tmp_path / "vit.safetensors")
    model = create_model(f"{spec}&weights={tmp_path / 'vit.safetensors'}", 3, 3)
    assert model.init_record["head"] == {"module": "head", "from_classes": 10, "to_classes": 3}
    assert torch.equal(model.patch_embed.proj.weight, source.patch_embed.proj.weight)


@pytest.mark.vision
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("torchvision:resnet81", "unknown model 'resnet81'; close: resnet18"),
        ("timm:vit_tiny_patch16_244", "close: vit_tiny_patch16_224"),
        ("torchvision:resnet18?weights=nowhere.pth", "weights file nowhere.pth does not exist"),
        ("timm:resnet18?img_size=32", "resnet18 does not take these options"),
    ],
)
def test_bad_family_specs_are_one_line(spec, message):
    with pytest.raises(KdxError, match=message):
        create_model(spec, 5, 3)


@pytest.mark.vision
def test_weights_of_another_architecture_name_file_key_and_fix(imagenet_resnet):
    _, path = imagenet_resnet
    with pytest.raises(KdxError) as error:
        create_model(f"torchvision:resnet34?weights={path}", 5, 3)
    text = str(error.value)
    assert "\n" not in text
    assert f"weights {path} do not fit 'torchvision:resnet34?weights={path}'" in text
    assert "layer1.2.conv1.weight is missing from the file" in text
    assert "give weights saved from this architecture" in text


@pytest.mark.vision
@pytest.mark.backends
@pytest.mark.parametrize("spec", ["torchvision:resnet18", "torchvision:mobilenet_v3_small"])
def test_a_cut_of_a_family_model_rebuilds_exports_and_matches(spec, tmp_path):
    """prune:0.5 of a torchvision model (residual sums, squeeze-excite: the dependency graph
    couples them), rebuilt from its structure, through export and parity on both CPU targets."""
    from kdexport import pruning
    from kdexport.zoo import Parent

    torch.manual_seed(0)
    x = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    teacher = _warm_batchnorm(create_model(spec, 5, 3), x)
    cut, record = pruning.student(
        Parent(teacher, spec, torch.from_numpy(x[:2])), "prune:0.5", 0, True, None
    )
    assert 0.15 < record["macs_ratio"] < 0.45, record["macs_ratio"]
    rebuilt = create_model(pruning.save_structure(cut, tmp_path).format(artifact=tmp_path), 5, 3)
    rebuilt.load_state_dict(cut.state_dict())
    rebuilt.eval()
    path = tmp_path / "cut.onnx"
    export_onnx(rebuilt, path, torch.from_numpy(x[:2]), x, OPTS, {"role": "cut"})
    sample = {"x": x, "y": np.zeros(len(x), np.int64), "cut": predict(cut.eval(), x)}
    for target in ("ort-cpu", "openvino-cpu"):
        out = tmp_path / target
        out.mkdir()
        result = compile_model(path, out, "cut", load_target(target), sample, None)
        assert result["parity"]["max_abs_diff"] <= 1e-4, (target, result["parity"]["summary"])
