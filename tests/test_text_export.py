"""Text classifiers to ONNX: named int64 inputs with dynamic batch and sequence axes, one
``logits`` output, parity with PyTorch on ONNX Runtime and OpenVINO at padded shapes, and
padding that does not change a sample's logits."""

import numpy as np
import pytest
import torch

from kdexport.backends.profiles import PARITY
from kdexport.backends.quantize import quantize_onnx_dynamic
from kdexport.evaluate import parity
from kdexport.modalities.text.export import (
    SHAPES,
    check_parity,
    export_and_check,
    export_text_classifier,
    input_names,
    padded_batch,
    padding_drift,
    reference_predict,
    torch_predict,
)

pytestmark = pytest.mark.backends
ATOL = PARITY["fp32"][0]


def _bert():
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=3,
        initializer_range=0.3,  # logits of a few units, so that 1e-4 is a real bound
    )
    return transformers.BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    model = _bert()
    path = tmp_path_factory.mktemp("text") / "bert.onnx"
    return model, path, export_and_check(model, path)


def test_inputs_outputs_and_axes(bert):
    _, _, facts = bert
    assert facts["exporter"] in ("dynamo", "torchscript")
    assert facts["inputs"] == [
        {"name": n, "dtype": "int64", "shape": ["batch", "sequence"]}
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    assert facts["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 3]}]
    assert facts["opset"] == 18 and facts["ir_version"] <= 10  # onnxruntime 1.21 reads IR 10


def test_parity_at_padded_shapes_on_every_runtime(bert):
    model, _, facts = bert
    assert set(facts["checks"]) == {"reference", "ort-cpu", "openvino-cpu"}
    scale = np.abs(torch_predict(model)(padded_batch(model, 8, 128))).max()
    assert scale > 0.5  # the bound is tight against the logits' size
    for check in facts["checks"].values():
        assert check["passed"] and set(check["shapes"]) == {f"{b}x{s}" for b, s in SHAPES}
        assert check["max_abs_diff"] <= ATOL and check["padding_drift"] <= ATOL
        assert all(c["top1_agreement"] == 1.0 for c in check["shapes"].values())


def test_padded_batches_hold_rows_of_different_lengths():
    feed = padded_batch(_bert(), 3, 37)
    assert feed["attention_mask"].sum(1).tolist() == [37, 23, 9]
    assert (feed["input_ids"][feed["attention_mask"] == 0] == 0).all()  # the pad token


def test_padding_drift_catches_a_model_that_reads_padding(bert):
    model, path, _ = bert
    onnx_run = reference_predict(path)
    feed = padded_batch(model, 4, 24)
    assert padding_drift(onnx_run, feed) <= ATOL
    ignores_mask = lambda f: onnx_run({**f, "attention_mask": np.ones_like(f["attention_mask"])})  # noqa: E731
    assert padding_drift(ignores_mask, feed) > 1e-2


def test_parity_fails_beyond_the_bound(bert):
    model, path, _ = bert
    onnx_run = reference_predict(path)
    check = check_parity(lambda f: onnx_run(f) + 1e-3, model, shapes=((2, 16),))
    assert not check["passed"] and check["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)


def test_a_model_without_token_type_ids(tmp_path):
    import transformers

    torch.manual_seed(0)
    config = transformers.DistilBertConfig(
        vocab_size=100,
        dim=32,
        n_layers=1,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    model = transformers.DistilBertForSequenceClassification(config).eval()
    assert input_names(model) == ["input_ids", "attention_mask"]
    facts = export_text_classifier(model, tmp_path / "distil.onnx", metadata={"role": "student"})
    assert [i["name"] for i in facts["inputs"]] == ["input_ids", "attention_mask"]
    check = check_parity(reference_predict(tmp_path / "distil.onnx"), model, ((3, 37),))
    assert check["passed"], check["shapes"]


def _int8_parity(path, model):
    atol, rtol, _ = PARITY["int8"]
    feed = padded_batch(model, 8, 32)
    return parity(
        reference_predict(path)(feed),
        torch_predict(model)(feed),
        atol,
        rtol=rtol,
        min_agreement=None,
    )


def test_dynamic_int8_quantizes_the_matmul_weights(bert, tmp_path):
    import onnx

    model, path, _ = bert
    quantize_onnx_dynamic(path, tmp_path / "dynamic.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "dynamic.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"} and "DynamicQuantizeLinear" in ops
    assert _int8_parity(tmp_path / "dynamic.onnx", model)["passed"]
