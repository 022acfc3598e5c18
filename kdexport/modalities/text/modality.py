"""Text through the modality contract: packed token arrays in the splits, three named int64
inputs in the ONNX file, measuring points "BATCHxTOKENS", the tokenizer in the bundle."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np

from kdexport.bundle.runner import TEXT_SHAPES, format_point, parse_point, text_shapes
from kdexport.errors import KdxError
from kdexport.modalities.contract import Modality, Source
from kdexport.modalities.inputs import ArrayInputs
from kdexport.modalities.text.tokens import PACKED, at_shape, pack, unpack
from kdexport.options import Range


def text_data(
    *,
    text_column: str = "text",
    text_pair_column: str = "",
    label_column: str = "label",
    max_length: Annotated[int, Range(2, 8192)] = 128,
    tokenizer: str = "",
) -> None:
    """The text keys of [data]: CSV/TSV/JSONL ``text_column`` (and ``text_pair_column`` for
    sentence pairs) with ``label_column``, tokenised by ``tokenizer`` (an ``hf:`` folder; ""
    takes the teacher's) to at most ``max_length`` tokens (ids cached in ``data.cache_dir``)."""


def text_benchmark(
    *,
    text_shapes: list[str] = list(TEXT_SHAPES),  # noqa: B006 (read-only; run.py's default)
) -> None:
    """The text key of [benchmark]: the shapes "BATCHxTOKENS" a text model is timed at."""


@functools.cache
def _tokenizer(spec: str):
    from kdexport.modalities.text.models import load_tokenizer

    return load_tokenizer(spec)


def _read_text(spec: str, opts: dict, labeled: bool, cache_dir: Path) -> Source:
    """A text file tokenised and packed (``tokens``), with its labels' class names."""
    from kdexport.modalities.text.data import load_text

    path = Path(spec)
    if not path.is_file():
        raise KdxError(f"data source {path}: no such file; give an existing .csv, .tsv or .jsonl")
    tokenizer, positions = _tokenizer(opts["tokenizer"])
    got = load_text(
        path,
        tokenizer,
        text=opts["text_column"],
        text_pair=opts["text_pair_column"],
        label=opts["label_column"] if labeled else "",
        max_length=opts["max_length"],
        max_positions=positions or None,
        cache_dir=cache_dir,
    )
    if labeled and (got.labels < 0).any():
        raise KdxError(
            f"data source {path}: {int((got.labels < 0).sum())} rows have no label; label them, "
            "or give the unlabeled rows as data.transfer"
        )
    x = pack(got.input_ids, got.token_type_ids, opts["max_length"], got.pad_id)
    pre = {
        "tokenizer": opts["tokenizer"],
        "max_length": opts["max_length"],
        "pad_id": got.pad_id,
        "columns": got.meta["columns"],
        "truncated": got.meta["at_max_length"],
    }
    return Source(ArrayInputs(x), got.labels if labeled else None, got.classes, pre)


def _shape(point: str) -> tuple[int, int]:
    """(batch, tokens) of a text measuring point, by run.py's parser ("1x128", "batch=1,seq=128")."""
    try:
        dims = parse_point(point)
    except ValueError:
        dims = {}
    if set(dims) != {"batch", "seq"}:
        raise KdxError(f"benchmark.text_shapes: '{point}' is not BATCHxSEQUENCE, e.g. \"1x128\"")
    return dims["batch"], dims["seq"]


class Text(Modality):
    name = "text"
    default_student = "hf-student:num_hidden_layers=1"  # the teacher's config, one layer
    options = {"data": text_data, "benchmark": text_benchmark}
    int8_scheme = "transformer"

    @property
    def schemes(self) -> dict:
        from kdexport.modalities.text.classifier import SCHEMES

        return SCHEMES

    def complete_recipe(self, recipe: dict) -> None:
        data, teacher = recipe["data"], recipe["teacher"]["model"]
        if not data["tokenizer"] and teacher.startswith("hf:"):
            data["tokenizer"] = teacher  # text is read by the teacher's tokenizer

    def check_options(self, data: dict) -> None:
        if not data["tokenizer"]:
            raise KdxError(
                "a text run reads its texts with a tokenizer: set data.tokenizer to the hf: "
                "folder whose tokenizer reads them (a teacher.model hf: gives its own)"
            )

    def read(self, spec: str, options: dict, labeled: bool, cache_dir: Path) -> Source:
        return _read_text(spec, options, labeled, cache_dir)

    def named_inputs(self, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        return unpack(x, names)

    def export(self, model, path: Path, x: np.ndarray, opts: dict, meta: dict) -> dict:
        from kdexport.modalities.text.export import export_run_model

        return export_run_model(model, path, x, opts, meta)

    def points(self, options: dict) -> list[str]:
        return [format_point(parse_point(p)) for p in options["text_shapes"] if _shape(p)]

    def check_points(self, points: list[str], recorded: dict) -> None:
        longest = recorded["max_length"]  # the texts were cut there
        for point in points:
            batch, seq = _shape(point)
            if seq > longest:
                raise KdxError(
                    f"benchmark.text_shapes: '{point}' has more tokens than data.max_length "
                    f"{longest}, where this run's texts were cut; give at most {batch}x{longest}"
                )

    def timing_inputs(self, sample: dict[str, np.ndarray]) -> Callable[[str], dict]:
        """ "BxS" (or a batch size: S = 16) filled from the first held-out sample
        (``tokens.at_shape``)."""
        names = list(sample)
        packed = np.stack(
            [sample.get(n, np.zeros_like(sample["input_ids"])) for n in PACKED], axis=1
        )

        def at(point: str) -> dict[str, np.ndarray]:
            batch, _, seq = str(point).partition("x")
            return unpack(at_shape(packed, int(batch), int(seq or 16)), names)

        return at

    def bundle_section(self, root: Path, recorded: dict, onnx_facts: dict, run: dict) -> dict:
        """The run's tokenizer.json, and what run.py needs to read text as the run did."""
        from kdexport.modalities.text.models import TOKENIZER_FILE, resolve_hf

        spec = recorded.get("tokenizer")
        try:
            folder, _ = resolve_hf(spec)
        except KdxError as e:
            raise KdxError(
                f"the bundle ships the run's tokenizer, {spec}, and it is not found here ({e}); "
                "package from the folder the run was made in (a relative hf: path is read from there)"
            ) from None
        source = folder / TOKENIZER_FILE
        if not source.is_file():
            raise KdxError(
                f"{spec}: no {TOKENIZER_FILE} in {folder}; the bundle ships the run's fast "
                "tokenizer file: save it there with tokenizer.save_pretrained"
            )
        shutil.copyfile(source, root / TOKENIZER_FILE)
        names = [i["name"] for i in onnx_facts["inputs"]]
        run_shapes = ((run.get("recipe") or {}).get("benchmark") or {}).get("text_shapes")
        return {
            "tokenizer": TOKENIZER_FILE,
            "tokenizer_source": spec,
            "max_length": recorded["max_length"],
            "pad_id": recorded["pad_id"],
            "inputs": names,
            "token_type_ids": "token_type_ids" in names,
            "columns": recorded.get("columns"),
            "truncation": "longest_first, right (as transformers' fast tokenizers)",
            "padding": "per batch to its longest text: input_ids pad_id, attention_mask 0, "
            "token_type_ids 0",
            "shapes": text_shapes(run_shapes, recorded["max_length"]),
        }

    def feature_sizes(self, teacher, student, opts: dict, x, outputs) -> tuple:
        from kdexport.modalities.text.features import loss_sizes

        return loss_sizes(teacher, student, opts, x, outputs)

    def feature_tap(self, model, kind: str, role: str):
        from kdexport.modalities.text.features import TextTap

        return TextTap(model, kind, role)

    def cutter(self):
        from kdexport.modalities.text.pruning import CUTTER

        return CUTTER


TEXT = Text()
