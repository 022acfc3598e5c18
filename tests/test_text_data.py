"""Text data (kdexport.modalities.text.data, kdexport.modalities.text.synthetic): CSV/TSV/JSONL read with the
caller's columns, labels as ids or names, tokenised once and cached, padded per batch; each bad
input is one line naming the problem."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from kdexport.errors import KdxError
from kdexport.modalities.text.data import UNLABELED, load_text, pad_batch
from kdexport.modalities.text.synthetic import CLASSES, generate, write_reviews
from kdexport.modalities.text.tiny import train_wordpiece


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece([t for t, _ in generate(300, seed=5)], vocab_size=300, max_length=64)


def _csv(path, rows, header="text,label"):
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_class_names_map_in_sorted_order(tokenizer, tmp_path):
    f = _csv(
        tmp_path / "a.csv",
        ["the food was good,pos", "the food was bad,neg", '"good, and great",pos'],
    )
    ds = load_text(f, tokenizer, text="text", label="label")
    assert ds.classes == ["neg", "pos"] and ds.labels.tolist() == [1, 0, 1]
    assert len(ds) == 3 and ds[0]["input_ids"][0] == tokenizer.cls_token_id
    valid = _csv(tmp_path / "v.csv", ["bad,neg", "fine,"])  # a validation file: the train mapping
    v = load_text(valid, tokenizer, text="text", label="label", classes=ds.classes)
    assert v.classes == ["neg", "pos"] and v.labels.tolist() == [0, UNLABELED]


def test_integer_labels_and_unlabeled_rows(tokenizer, tmp_path):
    f = _csv(tmp_path / "a.csv", ["a,2", "b,0", "c,-1", "d,"])
    ds = load_text(f, tokenizer, text="text", label="label")
    assert ds.classes is None and ds.labels.tolist() == [2, 0, UNLABELED, UNLABELED]
    transfer = load_text(f, tokenizer, text="text")  # no label column named: transfer data
    assert transfer.labels.tolist() == [UNLABELED] * 4


def test_tsv_text_pairs_have_segment_ids(tokenizer, tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("premise\thypothesis\ty\nthe food was good\tit was great\t1\nbad\tgood\t0\n")
    ds = load_text(f, tokenizer, text="premise", text_pair="hypothesis", label="y")
    ids, types = ds[0]["input_ids"], ds[0]["token_type_ids"]
    assert (ids == tokenizer.sep_token_id).sum() == 2 and types[0] == 0 and types[-1] == 1
    assert ds.labels.tolist() == [1, 0]


def test_jsonl_with_names_and_truncation(tokenizer, tmp_path):
    f = tmp_path / "a.jsonl"
    rows = [{"text": "the food was good " * 20, "label": "pos"}, {"text": "bad", "label": "neg"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_text(f, tokenizer, text="text", label="label", max_length=16, max_positions=64)
    assert [len(x) for x in ds.input_ids][0] == 16 and ds.meta["at_max_length"] == 1
    assert ds.labels.tolist() == [1, 0]


def test_token_ids_are_cached_and_reused(tokenizer, tmp_path):
    f = write_reviews(tmp_path / "r.csv", n=50, seed=1)
    cache = tmp_path / "cache"
    first = load_text(f, tokenizer, text="text", label="label", cache_dir=cache)
    (cached,) = cache.glob("text-*.npz")
    stamp = cached.stat().st_mtime_ns
    second = load_text(f, tokenizer, text="text", label="label", cache_dir=cache)
    assert (first.meta["cache_hit"], second.meta["cache_hit"]) == (False, True)
    assert cached.stat().st_mtime_ns == stamp
    assert all(np.array_equal(a, b) for a, b in zip(first.input_ids, second.input_ids, strict=True))
    assert np.array_equal(first.labels, second.labels) and second.classes == list(CLASSES)
    other = load_text(f, tokenizer, text="text", label="label", max_length=8, cache_dir=cache)
    assert not other.meta["cache_hit"] and len(list(cache.glob("text-*.npz"))) == 2
    cached.write_bytes(b"damaged")  # a damaged cache file is recomputed, not trusted
    again = load_text(f, tokenizer, text="text", label="label", cache_dir=cache)
    assert not again.meta["cache_hit"]
    assert all(np.array_equal(a, b) for a, b in zip(first.input_ids, again.input_ids, strict=True))


def test_batches_are_padded_to_their_longest(tokenizer, tmp_path):
    f = _csv(tmp_path / "a.csv", ["good,1", "the food was really very good indeed,0", "bad,"])
    ds = load_text(f, tokenizer, text="text", label="label")
    batch = pad_batch([ds[0], ds[1], ds[2]], ds.pad_id)
    lengths = [len(x) for x in ds.input_ids]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"][0, lengths[0] :].eq(tokenizer.pad_token_id).all()
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["labels"].tolist() == [1, 0, UNLABELED]
    short = next(iter(ds.loader(batch_size=1)))  # a batch of one is not padded at all
    assert short["attention_mask"].all() and short["input_ids"].shape == (1, lengths[0])


@pytest.mark.parametrize(
    ("name", "content", "options", "message"),
    [
        ("a.csv", "sentence,label\nx,1\n", {}, "no column 'text'; its columns: sentence, label"),
        ("a.csv", "text,y\nx,1\n", {}, "no column 'label'; its columns: text, y"),
        ("a.csv", "text,label\nx,1\n  ,0\n", {}, "row 2 has no text in 'text'"),
        (
            "a.csv",
            "text,label\nx,1\ny,pos\n",
            {},
            "labels mix integers (row 1: '1') and class names (row 2: 'pos')",
        ),
        ("a.csv", "text,label\nx,-3\n", {}, "row 1 has label -3; class ids are 0..K-1"),
        (
            "a.csv",
            "text,label\nx,pos\ny,neu\n",
            {"classes": ["neg", "pos"]},
            "row 2 has label 'neu', not one of the classes",
        ),
        (
            "a.jsonl",
            '{"text": "x", "label": 1.5}\n',
            {},
            "row 1 has label 1.5, neither a class id nor a class name",
        ),
        ("a.jsonl", '{"text": "x"}\n{"text": \n', {}, "line 2 is not JSON"),
        ("a.jsonl", "[1, 2]\n", {}, "line 1 is not a JSON object"),
        (
            "a.csv",
            "text,label\nx,1\n",
            {"max_length": 512},
            "max_length 512 is longer than the model's position embeddings (max_position_embeddings = 64)",
        ),
        ("a.csv", "text,label\n", {}, "no rows"),
        ("a.txt", "x\n", {}, "read .csv, .tsv or .jsonl text files, not '.txt'"),
        ("missing.csv", None, {}, "cannot read the file (No such file or directory)"),
        ("latin1.csv", b"text,label\ncaf\xe9,1\n", {}, "cannot read the file (not UTF-8 text)"),
    ],
)
def test_bad_input_is_one_line(tokenizer, tmp_path, name, content, options, message):
    f = tmp_path / name
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    with pytest.raises(KdxError) as e:
        load_text(
            f,
            tokenizer,
            text="text",
            label="label",
            max_positions=64,
            **{"max_length": 32, **options},
        )
    assert message in str(e.value) and "\n" not in str(e.value)


def test_synthetic_reviews_are_deterministic_and_labelled(tmp_path):
    a = write_reviews(tmp_path / "a.csv", n=400, seed=7).read_bytes()
    assert a == write_reviews(tmp_path / "b.csv", n=400, seed=7).read_bytes()
    assert a != write_reviews(tmp_path / "c.csv", n=400, seed=8).read_bytes()
    rows = generate(2000, seed=0, noise=0.0)
    assert {y for _, y in rows} == set(CLASSES)
    assert any(" not " in t and y == "positive" for t, y in rows)  # negation flips an opinion
    noisy = generate(2000, seed=0, noise=0.1)
    flipped = sum(y != z for (_, y), (_, z) in zip(rows, noisy, strict=True))
    assert 100 < flipped < 300  # about 10 %
    jsonl = write_reviews(tmp_path / "d.jsonl", n=3, seed=7).read_text().splitlines()
    assert [json.loads(line)["label"] for line in jsonl] == [y for _, y in generate(3, seed=7)]


def test_the_same_texts_give_the_same_vocabulary_in_every_process():
    """tokenizers' WordPieceTrainer numbers pieces in hash-map order, which differs between
    processes (huggingface/tokenizers#1794): the example teacher's tokenizer differed run to run,
    and with it the trained model. Two fresh interpreters must write the same vocabulary."""
    code = (
        "import json; from kdexport.modalities.text.synthetic import generate;"
        "from kdexport.modalities.text.tiny import train_wordpiece;"
        "print(json.dumps(train_wordpiece([t for t, _ in generate(300, seed=5)], 300).get_vocab(),"
        " sort_keys=True))"
    )
    vocabs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(3)
    }
    assert len(vocabs) == 1
    vocab = json.loads(vocabs.pop())
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert {"good", "not", "##g"} <= set(vocab)  # whole words, and characters for the rest


def test_the_most_frequent_words_fit_and_characters_spell_the_rest():
    # 13 characters: 5 special tokens + 26 pieces; then words by count, equal counts by spelling
    small = train_wordpiece(["the battery was not good", "good"], vocab_size=33, max_length=16)
    assert len(small) == 33
    assert small.tokenize("the good battery zzz") == ["t", "##h", "##e", "good", "battery", "[UNK]"]
    with pytest.raises(KdxError, match="vocab_size 10 cannot hold"):
        train_wordpiece(["the battery was not good"], vocab_size=10)
