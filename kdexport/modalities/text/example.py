"""The offline text example: synthetic reviews and an untrained BERT teacher to train on them.

    python -m kdexport.modalities.text.example [FOLDER]      # default: text-example

writes ``FOLDER/reviews.csv`` (``kdexport.modalities.text.synthetic``: made-up product reviews in four
classes, generated from templates with a fixed seed; no real data) and ``FOLDER/teacher/``, a
BERT classifier with random weights (``TEACHER``: 5 layers, hidden 128) and a WordPiece tokenizer learnt from those
reviews (``kdexport.modalities.text.tiny``). The built-in recipe ``kdexport/recipes/text.toml`` reads both:
its teacher stage trains the teacher from those random weights, then the pipeline distills it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kdexport.modalities.text.synthetic import CLASSES, generate, write_reviews
from kdexport.modalities.text.tiny import tiny_teacher

ROWS, SEED, NOISE = 6000, 0, 0.05
VOCAB = 1000
TEACHER = {  # BERT config of the teacher to train (the student is set in the recipe)
    "num_hidden_layers": 5,
    "hidden_size": 128,
    "num_attention_heads": 4,
    "intermediate_size": 512,
    "max_position_embeddings": 128,
    # No dropout: trained from scratch on a few thousand short texts, a 2-layer BERT with
    # dropout stays at the bag-of-words fit (~0.65) and never learns negation.
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def write_example(folder: str | Path = "text-example") -> Path:
    """Write the reviews and the untrained teacher into ``folder``; return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_reviews(folder / "reviews.csv", ROWS, SEED, NOISE)
    texts = [t for t, _ in generate(ROWS, SEED, NOISE)]
    tiny_teacher(folder / "teacher", texts, list(CLASSES), vocab_size=VOCAB, seed=SEED, **TEACHER)
    return folder


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = write_example(args[0] if args else "text-example")
    print(f"wrote {folder}/reviews.csv and {folder}/teacher (untrained)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
