"""A tiny BERT teacher built from the data, so a text recipe runs with no download.

``train_wordpiece`` makes a WordPiece tokenizer (lower-cased, BERT's normaliser and
pre-tokenizer, ``[CLS] A [SEP] B [SEP]`` template) from the training texts with the
``tokenizers`` library; ``tiny_teacher`` writes an untrained BERT classifier (2 layers, hidden
size 32 by default) with that tokenizer to a folder that ``hf:FOLDER`` loads. Training it is the
teacher stage's job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kdexport.errors import KdxError
from kdexport.modalities.text.models import label_config, require_text_extra, save_text_model

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TINY = {  # the tiny teacher's shape: seconds per epoch on a CPU for a few thousand sentences
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


def wordpiece_vocab(
    texts: Iterable[str], vocab_size: int, normalizer: Any, pre_tokenizer: Any
) -> dict[str, int]:
    """A WordPiece vocabulary for ``texts`` that depends on them alone: the special tokens, every
    character the texts use (alone and as a ``##`` continuation, so no word is unknown), then
    whole words, most frequent first and equal counts by spelling, up to ``vocab_size`` tokens.

    Not ``tokenizers``' WordPieceTrainer: it numbers and merges pieces of equal count in hash-map
    order, so the same texts gave other vocabularies from one process to the next
    (huggingface/tokenizers#1794) and the same recipe and seeds trained other models."""
    counts: Counter[str] = Counter()
    for text in texts:
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        counts.update(word for word, _ in words)
    chars = sorted({c for word in counts for c in word})
    pieces = [*SPECIAL, *chars, *(f"##{c}" for c in chars)]
    words = sorted((w for w in counts if w not in pieces), key=lambda w: (-counts[w], w))
    if vocab_size < len(pieces):
        raise KdxError(
            f"vocab_size {vocab_size} cannot hold the {len(pieces)} special tokens and characters of these texts; raise it"
        )
    return {t: i for i, t in enumerate([*pieces, *words][:vocab_size])}


def train_wordpiece(texts: Iterable[str], vocab_size: int = 1000, max_length: int = 128) -> Any:
    """A fast transformers tokenizer whose WordPiece vocabulary (at most ``vocab_size`` tokens,
    the 5 special ones included) is ``wordpiece_vocab(texts)``; ``max_length`` is its
    ``model_max_length``. The same texts, the same tokenizer."""
    require_text_extra()
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = wordpiece_vocab(texts, vocab_size, normalizer, pre_tokenizer)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.decoder = decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    names = ("pad", "unk", "cls", "sep", "mask")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],  # BERT's
        **{f"{n}_token": s for n, s in zip(names, SPECIAL, strict=True)},
    )


def tiny_teacher(
    folder: str | Path,
    texts: Iterable[str],
    labels: list[str],
    *,
    vocab_size: int = 1000,
    seed: int = 0,
    **config: Any,
) -> Path:
    """Write an untrained BERT classifier for ``labels`` and a WordPiece tokenizer trained on
    ``texts`` to ``folder``; load it as ``hf:FOLDER``. ``config`` overrides ``TINY`` (any
    BertConfig key). Returns ``folder``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    shape = {**TINY, **config}
    tokenizer = train_wordpiece(texts, vocab_size, shape["max_position_embeddings"])
    bert = BertConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        **shape,
        **label_config(labels),
    )
    torch.manual_seed(seed)
    return save_text_model(BertForSequenceClassification(bert).eval(), tokenizer, folder)
