"""Every architecture of the export suite exports, compiles on ort-cpu and openvino-cpu, and
matches PyTorch (untrained weights; BatchNorm statistics made non-trivial first)."""

import numpy as np
import pytest
import torch
from suite_models import SUITE

from kdexport.backends.profiles import load_target
from kdexport.compile import compile_model
from kdexport.export import export_onnx, predict

pytestmark = pytest.mark.backends

OPTS = {"opset": 18, "example_batch": 4, "tolerance": 1e-4, "external_data_mb": 1800}


def _warm_batchnorm(model, x):
    """One training-mode pass so BatchNorm running statistics are not the identity."""
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(x))
    return model.eval()


@pytest.mark.parametrize("arch", sorted(SUITE))
def test_suite_exports_and_matches_on_cpu_targets(arch, tmp_path):
    torch.manual_seed(0)
    x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    model = _warm_batchnorm(SUITE[arch](), x)
    path = tmp_path / "model.onnx"
    facts = export_onnx(model, path, torch.from_numpy(x[:4]), x, OPTS, {"role": arch})
    # The dynamo exporter itself, not the TorchScript fallback: an onnxscript too old for this torch
    # fails it quietly (torch 2.13 needs onnxscript 0.6 or newer).
    assert facts["exporter"] == "dynamo"
    assert isinstance(facts["inputs"][0]["shape"][0], str)  # symbolic batch
    assert set(facts["batch_check_max_abs_diff"]) == {"1", "4", "9"}
    sample = {"x": x, "y": np.zeros(len(x), np.int64), "model": predict(model, x)}
    for target in ("ort-cpu", "openvino-cpu"):
        out = tmp_path / target
        out.mkdir()
        result = compile_model(path, out, "model", load_target(target), sample, None)
        assert result["parity"]["passed"], (target, result["parity"]["summary"])
