"""Token arrays as the pipeline carries them: one int64 array per split, (N, 3, L).

The stages move data as arrays (split, cached, sampled, saved in ``io_sample.npz``); a text
sample is three rows of token data, packed along axis 1 in ``PACKED`` order: ``input_ids`` (the
pad id after the text), ``attention_mask`` (1 on tokens, 0 on padding) and ``token_type_ids``.
``L`` is the data's ``max_length``; a batch is cut back to its longest example before a model
sees it (``trim``), so padding up to ``L`` costs nothing. An exported model takes the rows as
named inputs (``unpack``): the ONNX file has the usual int64 ``input_ids``, ``attention_mask``
(and ``token_type_ids`` where the model takes them) with dynamic batch and sequence axes.

numpy only: the text modality's export, timing inputs and bundle use it without torch.
"""

from __future__ import annotations

import numpy as np

PACKED = ("input_ids", "attention_mask", "token_type_ids")


def pack(input_ids: list, token_type_ids: list | None, length: int, pad_id: int) -> np.ndarray:
    """Examples of their own length (each at most ``length``) as one (N, 3, length) array."""
    x = np.zeros((len(input_ids), len(PACKED), length), np.int64)
    x[:, 0, :] = pad_id
    for i, ids in enumerate(input_ids):
        n = len(ids)
        x[i, 0, :n] = ids
        x[i, 1, :n] = 1
        if token_type_ids is not None:
            x[i, 2, :n] = token_type_ids[i]
    return x


def longest(x: np.ndarray) -> int:
    """The longest example's token count in a packed array (at least 1)."""
    return max(int(x[:, 1].sum(axis=1).max()) if len(x) else 1, 1)


def trim(x: np.ndarray) -> np.ndarray:
    """The packed array cut back to its longest example."""
    return x[:, :, : longest(x)]


def unpack(x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The named model inputs of a packed array, trimmed to its longest example; ``names`` are
    the model's inputs (a model without ``token_type_ids`` does not get them)."""
    x = trim(x)
    unknown = [n for n in names if n not in PACKED]
    if unknown:
        raise ValueError(f"model inputs {unknown} are not token inputs ({', '.join(PACKED)})")
    return {n: np.ascontiguousarray(x[:, PACKED.index(n)]) for n in names}


def at_shape(x: np.ndarray, batch: int, seq: int) -> np.ndarray:
    """A packed array of ``batch`` examples of exactly ``seq`` tokens, for timing: the first
    example's tokens repeated to ``seq`` with a full attention mask (a transformer's latency
    depends on the shape, not on which tokens)."""
    tokens = x[0, :, : longest(x[:1])]
    reps = -(-seq // tokens.shape[1])
    row = np.tile(tokens, (1, reps))[:, :seq].copy()
    row[1] = 1
    return np.tile(row[None], (batch, 1, 1))
