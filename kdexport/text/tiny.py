"""A tiny BERT teacher built from the data, so a text recipe runs with no download.

``train_wordpiece`` trains a WordPiece tokenizer (lower-cased, BERT's normaliser and
pre-tokenizer, ``[CLS] A [SEP] B [SEP]`` template) in memory on the training texts with the
``tokenizers`` library; ``tiny_teacher`` writes an untrained BERT classifier (2 layers, hidden
size 32 by default) with that tokenizer to a folder that ``hf:FOLDER`` loads. Training it is the
teacher stage's job.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kdexport.text.models import label_config, require_text_extra, save_text_model

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TINY = {  # the tiny teacher's shape: seconds per epoch on a CPU for a few thousand sentences
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


def train_wordpiece(texts: Iterable[str], vocab_size: int = 1000, max_length: int = 128) -> Any:
    """A fast transformers tokenizer whose WordPiece vocabulary (at most ``vocab_size`` tokens,
    the 5 special ones included) is learnt from ``texts``; ``max_length`` is its
    ``model_max_length``."""
    require_text_extra()
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL))
    tok.train_from_iterator(texts, trainer)
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
