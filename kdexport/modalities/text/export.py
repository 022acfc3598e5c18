"""A Hugging Face sequence classifier -> ONNX, and the checks that the file answers as PyTorch.

The graph takes int64 ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the model's
forward takes them), each (batch, sequence) with both axes dynamic, and gives one output,
``logits`` (batch, classes). The exporter is ``kdexport.onnxfile.torch_to_onnx``, the one the
export stage uses, TorchScript first here (``export_text_classifier``), and the result says
which ran.

Checks (fp32 bound of ``profiles.PARITY``: 1e-4 absolute, 100% top-1):

- ``check_parity``: a runtime (ONNX Runtime with no rewrites, the ort-cpu or openvino-cpu
  target's compiled form) against PyTorch at several (batch, sequence) shapes, each batch
  right-padded with rows of different lengths;
- ``padding_drift``: the largest difference between a sample's logits alone (unpadded) and its
  logits inside a padded batch; padding must not change what a sample gets.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kdexport.backends import backend
from kdexport.backends.profiles import PARITY, load_target
from kdexport.errors import KdxError
from kdexport.evaluate import parity
from kdexport.modalities.text.tokens import PACKED, unpack
from kdexport.onnxfile import (
    check_batch_sizes,
    check_onnx_file,
    finish_onnx,
    reference_outputs,
    torch_to_onnx,
)

OUTPUT = "logits"
AXES = {0: "batch", 1: "sequence"}
SHAPES = ((1, 16), (1, 128), (8, 128), (3, 37))  # (batch, sequence) checked by default
Predict = Callable[[dict[str, np.ndarray]], np.ndarray]


def input_names(model) -> list[str]:
    """The graph's inputs: token_type_ids only for models whose forward takes them."""
    params = inspect.signature(model.forward).parameters
    return [n for n in PACKED if n in params]


class Logits(torch.nn.Module):
    """The classifier returning the logits tensor alone (token_type_ids left out when None)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


def padded_batch(model, batch: int, sequence: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tokens for ``model``'s inputs, right-padded: row 0 fills the sequence, the
    others are shorter (down to a quarter of it); token_type_ids mark a second segment."""
    rng = np.random.default_rng(seed)
    config = model.config
    pad = config.pad_token_id or 0
    lengths = np.linspace(sequence, max(1, sequence // 4), batch).round().astype(np.int64)
    positions = np.arange(sequence)[None, :]
    mask = (positions < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, config.vocab_size, (batch, sequence), dtype=np.int64)
    ids = np.where(mask == 1, ids, pad)
    segment = ((positions >= lengths[:, None] // 2) & (mask == 1)).astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": segment}
    return {n: feed[n] for n in input_names(model)}


def torch_predict(model) -> Predict:
    """PyTorch's logits for a feed of numpy arrays."""

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
        return out.logits.float().numpy()

    return run


def export_text_classifier(
    model, path: str | Path, *, opset: int = 18, metadata: dict[str, str] | None = None
) -> dict:
    """Export ``model`` (a ``*ForSequenceClassification`` in eval mode) to ``path``.

    Returns the exporter that ran ("torchscript" or "dynamo") and the file's facts
    (``onnxfile.check_onnx_file``: opset, IR version, inputs, outputs). The sequence axis is
    bounded by the model's ``max_position_embeddings``.

    A copy of the model with eager attention goes to the TorchScript exporter first: its graph
    ran 1.2-1.3x faster on ONNX Runtime than the dynamo exporter's of the model with PyTorch's
    SDPA attention (4 layers, hidden 256, 1x96 tokens; the dynamo graph keeps 13 Slice and 11
    Concat nodes after ONNX Runtime's optimizations), with the same parity; it is what Optimum
    exports (docs/text-export.md).
    """
    import copy

    import onnx

    from kdexport.modalities.text.features import use_eager_attention

    path = Path(path)
    model = copy.deepcopy(model)
    use_eager_attention(model)
    names = input_names(model)
    example = padded_batch(model, 2, min(16, model.config.max_position_embeddings))
    args = tuple(torch.from_numpy(example[n]) for n in names)
    limit = getattr(model.config, "max_position_embeddings", 1 << 20)
    exporter = torch_to_onnx(
        Logits(model).eval(),
        args,
        path,
        opset,
        {n: AXES for n in names},
        {OUTPUT: {0: "batch"}},
        sizes={"batch": (1, 1 << 20), "sequence": (1, limit)},
        exporters=("torchscript", "dynamo"),
    )
    if metadata:
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, metadata)
        onnx.save(proto, str(path))
    facts = check_onnx_file(path)
    for value in facts["inputs"]:
        if value["dtype"] != "int64" or value["shape"] != ["batch", "sequence"]:
            raise KdxError(
                f"{path.name}: input '{value['name']}' exported as {value['dtype']} "
                f"{value['shape']}, not int64 [batch, sequence]; re-export"
            )
    return {"exporter": exporter, **facts}


def reference_predict(path: str | Path) -> Predict:
    """ONNX Runtime's CPU provider with no graph rewrites, as the export stage checks."""
    return lambda feed: reference_outputs(Path(path), feed)[OUTPUT]


def target_predict(path: str | Path, target_name: str, folder: str | Path) -> Predict:
    """The model compiled for a target (``ort-cpu``, ``openvino-cpu``) into ``folder``."""
    target = load_target(target_name)
    if problem := target.unavailable_reason():
        raise KdxError(f"target '{target_name}': {problem}")
    module = backend(target.backend, target.name)
    runner = module.load(module.compile(Path(path), Path(folder), "model", target), target)
    return runner.run


def check_parity(
    predict: Predict, model, shapes=SHAPES, precision: str = "fp32", seed: int = 0
) -> dict:
    """``predict`` against PyTorch at each (batch, sequence) of ``shapes`` (padded batches).

    Returns ``{"passed", "max_abs_diff", "shapes": {"BxS": parity figures}}``.
    """
    atol, rtol, agreement = PARITY[precision]
    reference = torch_predict(model)
    out = {}
    for batch, sequence in shapes:
        feed = padded_batch(model, batch, sequence, seed)
        check = parity(predict(feed), reference(feed), atol, rtol=rtol, min_agreement=agreement)
        out[f"{batch}x{sequence}"] = check
    return {
        "passed": all(c["passed"] for c in out.values()),
        "max_abs_diff": max(c.get("max_abs_diff", float("inf")) for c in out.values()),
        "shapes": out,
    }


def padding_drift(predict: Predict, feed: dict[str, np.ndarray]) -> float:
    """The largest |logit| difference between each row of the right-padded batch ``feed``
    alone (cut to its ``attention_mask`` length) and the same row inside the batch."""
    batch = predict(feed)
    worst = 0.0
    for i, length in enumerate(feed["attention_mask"].sum(1)):
        alone = predict({k: np.ascontiguousarray(v[i : i + 1, :length]) for k, v in feed.items()})
        worst = max(worst, float(np.abs(alone[0] - batch[i]).max()))
    return worst


def export_and_check(
    model, path: str | Path, *, targets=("ort-cpu", "openvino-cpu"), shapes=SHAPES
) -> dict:
    """Export, then check parity on the reference run and on each target, and padding
    invariance on each; a failed check is a ``KdxError``. Returns every figure."""
    facts = export_text_classifier(model, path)
    atol = PARITY["fp32"][0]
    runs = {"reference": reference_predict(path)}
    with tempfile.TemporaryDirectory() as tmp:
        for name in targets:
            (Path(tmp) / name).mkdir()
            runs[name] = target_predict(path, name, Path(tmp) / name)
        checks = {}
        for name, predict in runs.items():
            check = check_parity(predict, model, shapes)
            check["padding_drift"] = padding_drift(predict, padded_batch(model, 4, 24))
            if not check["passed"] or check["padding_drift"] > atol:
                raise KdxError(
                    f"{Path(path).name} on {name} differs from PyTorch (max abs diff "
                    f"{check['max_abs_diff']:.3g}, padding drift {check['padding_drift']:.3g}, "
                    f"bound {atol:g})"
                )
            checks[name] = check
    return {**facts, "checks": checks}


def export_run_model(model, path: Path, x: np.ndarray, opts: dict, meta: dict) -> dict:
    """The export stage's form for a text classifier (``TEXT.export``): named int64 token
    inputs, dynamic batch and sequence axes, checked against PyTorch on the packed held-out
    sample ``x`` at three batch sizes, at (batch, sequence) shapes of padded random tokens, and
    for padding: each held-out sample alone must give what it gets inside a padded batch."""
    from kdexport.train.loop import predict

    if opts.get("static"):
        raise KdxError("export.static applies to image models; a text model keeps dynamic axes")
    exporter = export_text_classifier(model.hf, path, opset=opts["opset"])["exporter"]
    facts = finish_onnx(path, meta, dynamic=True)
    names = [i["name"] for i in facts["inputs"]]
    sizes = sorted({1, opts["example_batch"], 2 * opts["example_batch"] + 1})
    facts["batch_check_max_abs_diff"] = check_batch_sizes(
        path,
        lambda xb: predict(model, xb),
        lambda xb: unpack(xb, names),
        x,
        sizes,
        opts["tolerance"],
    )
    limit = model.hf.config.max_position_embeddings
    predict_onnx = reference_predict(path)
    shaped = check_parity(predict_onnx, model.hf, [s for s in SHAPES if s[1] <= limit])
    if not shaped["passed"]:
        raise KdxError(
            f"{path.name} differs from PyTorch on padded batches: max abs diff "
            f"{shaped['max_abs_diff']:.3g} (shapes {', '.join(shaped['shapes'])})"
        )
    drift = padding_drift(predict_onnx, unpack(x[:8], names))
    if drift > opts["tolerance"]:
        raise KdxError(
            f"{path.name}: a sample alone and inside a padded batch differ by {drift:.3g} "
            f"(bound {opts['tolerance']:g}); the attention mask is not honoured"
        )
    facts["shape_parity"] = {k: v["max_abs_diff"] for k, v in shaped["shapes"].items()}
    facts["padding_drift"] = drift
    return {"exporter": exporter, **facts}
