"""Text data: CSV, TSV or JSONL files of texts (or text pairs) and labels, tokenised once.

The caller names the columns: ``text``, optionally ``text_pair`` (sentence-pair tasks) and
``label`` (empty: the whole file is unlabeled transfer data). Labels are integer class ids or
class names; names map to ids in sorted order (or by the ``classes`` given, so a validation file
uses the training file's mapping). An empty label cell, or -1, marks an unlabeled row
(``kdexport.losses.UNLABELED``). Rows are counted from 1, the header not included.

Texts are tokenised once with the teacher's tokenizer (truncated to ``max_length``) and cached
in ``CACHE_DIR/text-KEY.npz``, KEY the sha256 of the data file, the tokenizer's tokenizer.json
(``tokenizer_sha256``), ``max_length`` and the text columns. Examples keep their own length; ``pad_batch`` pads each
batch to its longest example.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdexport.artifact import atomic_file, sha256
from kdexport.errors import KdxError

UNLABELED = -1  # the value of kdexport.losses.UNLABELED; not imported: that module loads torch
DELIMITERS = {".csv": ",", ".tsv": "\t"}
JSON_LINES = (".jsonl", ".ndjson")
_INTEGER = re.compile(r"-?\d+")


@dataclass
class TextSet:
    """Tokenised examples of one file: token ids (one array per example), labels (-1 where
    unlabeled), the class names when the file gave names, and how it was read."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    labels: np.ndarray
    classes: list[str] | None
    pad_id: int
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"input_ids": self.input_ids[i], "label": int(self.labels[i])}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[i]
        return item

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        """A torch DataLoader over the examples, each batch padded by ``pad_batch``."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(
            self,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=functools.partial(pad_batch, pad_id=self.pad_id),
        )


def pad_batch(items: list[dict], pad_id: int = 0) -> dict:
    """Stack examples into tensors padded to the batch's longest: ``input_ids`` (pad_id),
    ``attention_mask`` (1 on tokens, 0 on padding), ``token_type_ids`` (0) when the examples
    have them, and ``labels``."""
    import torch

    longest = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        ids[row, :n] = torch.as_tensor(it["input_ids"], dtype=torch.long)
        mask[row, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in items[0]:
        types = torch.zeros((len(items), longest), dtype=torch.long)
        for row, it in enumerate(items):
            types[row, : len(it["token_type_ids"])] = torch.as_tensor(it["token_type_ids"])
        batch["token_type_ids"] = types
    batch["labels"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
    return batch


def read_rows(path: str | Path) -> tuple[list[dict], list[str]]:
    """The rows of a CSV, TSV or JSONL file as dicts, and the column names."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DELIMITERS and suffix not in JSON_LINES:
        raise KdxError(f"{path}: read .csv, .tsv or .jsonl text files, not '{suffix}'")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise KdxError(f"{path}: cannot read the file ({why})") from None
    if suffix in JSON_LINES:
        rows = _json_lines(path, text)
        return rows, list(dict.fromkeys(k for r in rows for k in r))
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=DELIMITERS[suffix])
        rows = list(reader)
    except csv.Error as e:
        raise KdxError(f"{path}: not a readable {suffix[1:].upper()} file ({e})") from None
    return rows, list(reader.fieldnames or [])


def _json_lines(path: Path, text: str) -> list[dict]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise KdxError(f"{path}: line {n} is not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise KdxError(f"{path}: line {n} is not a JSON object; write one object per line")
        rows.append(row)
    return rows


def _column(path: Path, rows: list[dict], columns: list[str], name: str) -> list[str]:
    """The non-empty texts of column ``name``, one per row."""
    if name not in columns:
        raise KdxError(f"{path}: no column '{name}'; its columns: {', '.join(columns) or 'none'}")
    texts = []
    for n, row in enumerate(rows, 1):
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            raise KdxError(f"{path}: row {n} has no text in '{name}'; fill it or remove the row")
        texts.append(value)
    return texts


def parse_labels(
    path: Path, values: list, classes: list[str] | None = None
) -> tuple[np.ndarray, list[str] | None]:
    """Class ids (-1 where unlabeled) from integer ids or class names, and the class names
    (sorted, or ``classes`` when given; None when the labels were integers)."""
    kinds = [_kind(path, n, v) for n, v in enumerate(values, 1)]
    given = [(n, v, k) for n, (v, k) in enumerate(zip(values, kinds, strict=True), 1) if k]
    ints = [g for g in given if g[2] == "int"]
    names = [g for g in given if g[2] == "name"]
    if ints and names and classes is None:
        (ni, vi, _), (nn, vn, _) = ints[0], names[0]
        raise KdxError(
            f"{path}: labels mix integers (row {ni}: {vi!r}) and class names (row {nn}: {vn!r}); use one or the other"
        )
    if names or classes is not None:
        return _by_name(path, values, kinds, classes)
    y = np.array([int(v) if k else UNLABELED for v, k in zip(values, kinds, strict=True)], np.int64)
    if (y < UNLABELED).any():
        n = int(np.argmax(y < UNLABELED)) + 1
        raise KdxError(
            f"{path}: row {n} has label {y[n - 1]}; class ids are 0..K-1 (-1: unlabeled)"
        )
    return y, None


def _kind(path: Path, n: int, value) -> str:
    """'' (unlabeled), 'int' or 'name'; anything else is refused."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return "" if value == UNLABELED else "int"
    if isinstance(value, str):
        value = value.strip()
        if _INTEGER.fullmatch(value):
            return "" if int(value) == UNLABELED else "int"
        return "name"
    raise KdxError(f"{path}: row {n} has label {value!r}, neither a class id nor a class name")


def _by_name(path: Path, values: list, kinds: list[str], classes: list[str] | None):
    names = [str(v).strip() for v, k in zip(values, kinds, strict=True) if k]
    classes = classes if classes is not None else sorted(set(names))
    index = {name: i for i, name in enumerate(classes)}
    y = np.full(len(values), UNLABELED, np.int64)
    for n, (v, k) in enumerate(zip(values, kinds, strict=True), 1):
        if k and (name := str(v).strip()) not in index:
            raise KdxError(f"{path}: row {n} has label {name!r}, not one of the classes {classes}")
        if k:
            y[n - 1] = index[str(v).strip()]
    return y, list(classes)


def tokenizer_sha256(tokenizer) -> str:
    """The sha256 of the tokenizer's tokenizer.json (its serialisation by ``tokenizers``) less
    its truncation and padding settings, which each call of the tokenizer sets anew."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.update(truncation=None, padding=None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def cache_key(data_sha256: str, tokenizer: str, max_length: int, columns: list[str]) -> str:
    """What the token ids depend on: the file's bytes, the tokenizer, max_length, the columns."""
    raw = json.dumps([data_sha256, tokenizer, max_length, columns]).encode()
    return hashlib.sha256(raw).hexdigest()[:20]


def _tokenise(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int) -> dict:
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    ids = [np.asarray(x, np.int32) for x in enc["input_ids"]]
    out = {"offsets": np.cumsum([0] + [len(x) for x in ids]), "ids": np.concatenate(ids)}
    if "token_type_ids" in enc:
        out["types"] = np.concatenate([np.asarray(x, np.int8) for x in enc["token_type_ids"]])
    return out


def _load_cache(path: Path, n: int) -> dict | None:
    """The cached arrays, or None when the file is missing, damaged or does not fit."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError):
        return None
    return arrays if len(arrays.get("offsets", ())) == n + 1 else None


def load_text(
    path: str | Path,
    tokenizer,
    *,
    text: str,
    text_pair: str = "",
    label: str = "",
    max_length: int = 128,
    max_positions: int | None = None,
    classes: list[str] | None = None,
    cache_dir: str | Path | None = None,
) -> TextSet:
    """Read ``path`` (.csv, .tsv, .jsonl), check it, tokenise it (or reuse the cache).

    ``max_positions``: the model's ``max_position_embeddings``; a longer ``max_length`` is
    refused. ``cache_dir``: where token ids are cached (None: no cache)."""
    path = Path(path)
    if max_length < 2:
        raise KdxError(f"max_length {max_length} is too short; give at least 2 tokens")
    if max_positions is not None and max_length > max_positions:
        raise KdxError(
            f"max_length {max_length} is longer than the model's position embeddings (max_position_embeddings = {max_positions}); set max_length <= {max_positions}"
        )
    rows, columns = read_rows(path)
    if not rows:
        raise KdxError(f"{path}: no rows; give at least one example")
    texts = _column(path, rows, columns, text)
    pairs = _column(path, rows, columns, text_pair) if text_pair else None
    if label and label not in columns:
        raise KdxError(f"{path}: no column '{label}'; its columns: {', '.join(columns)}")
    y, names = parse_labels(
        path, [r.get(label) for r in rows] if label else [None] * len(rows), classes
    )
    key = cache_key(sha256(path), tokenizer_sha256(tokenizer), max_length, [text, text_pair])
    file = Path(cache_dir) / f"text-{key}.npz" if cache_dir is not None else None
    arrays = _load_cache(file, len(rows)) if file is not None and file.is_file() else None
    hit = arrays is not None
    if arrays is None:
        arrays = _tokenise(tokenizer, texts, pairs, max_length)
        if file is not None:
            with atomic_file(file) as f:
                np.savez(f, **arrays)
    ids, types = _examples(arrays)
    meta = {
        "path": str(path),
        "columns": {"text": text, "text_pair": text_pair, "label": label},
        "max_length": max_length,
        "cache_key": key,
        "cache_hit": hit,
        "at_max_length": int(np.sum(np.diff(arrays["offsets"]) >= max_length)),
    }
    return TextSet(ids, types, y, names, int(tokenizer.pad_token_id or 0), meta)


def _examples(arrays: dict) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """The flat arrays cut back into one array per example."""
    bounds = arrays["offsets"]

    def cut(a: np.ndarray) -> list[np.ndarray]:
        return [a[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]

    return cut(arrays["ids"]), cut(arrays["types"]) if "types" in arrays else None
