"""A small synthetic sentiment data set, written offline and deterministically from a seed.

SYNTHETIC: the sentences are built from templates and word lists below, not written by people;
they are for tests, examples and quick recipes, not for judging a model on real language.

Each review names one or more aspects ("the battery", "the service") and says something about
each. Four classes:

- ``positive``: every opinion is positive; ``negative``: every opinion is negative;
- ``mixed``: one positive and one negative opinion;
- ``neutral``: no opinion, only plain facts and neutral words ("average", "ordinary").

What keeps it from being trivial: negation flips an opinion ("was not good" is negative, "was
not bad" positive), so a bag of words is not enough; aspects, intensifiers, openers and neutral
clauses are shared by every class; "but" joins mixed reviews more often but not always; and a
fraction ``noise`` of the labels (5 % by default) is replaced with another class at random, so
no model should score above about 1 - noise on held-out rows.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

from kdexport.artifact import write_text
from kdexport.errors import KdxError

CLASSES = ("mixed", "negative", "neutral", "positive")  # sorted: the ids load_text assigns
ASPECTS = (
    "the food", "the service", "the staff", "the screen", "the battery", "the plot",
    "the acting", "the price", "the delivery", "the sound", "the room", "the camera",
)  # fmt: skip
POSITIVE = (
    "good", "great", "excellent", "lovely", "superb", "fantastic", "pleasant", "solid",
    "impressive", "wonderful",
)  # fmt: skip
NEGATIVE = (
    "bad", "awful", "terrible", "poor", "dull", "disappointing", "horrible", "weak", "broken",
    "annoying",
)  # fmt: skip
NEUTRAL = ("average", "ordinary", "standard", "typical", "usual", "unremarkable")
VERBS = ("was", "is", "seemed", "felt", "looked")
INTENSIFIERS = ("", "", "very ", "really ", "quite ", "rather ", "so ")
NEGATORS = ("not", "not", "never", "hardly")
OPENERS = ("", "", "", "honestly, ", "overall ", "i think ", "to be fair, ", "in short, ")
DAYS = ("monday", "tuesday", "friday", "the weekend", "a holiday")
FACTS = (
    "i bought it last {day}",
    "we went there on {day}",
    "it arrived on {day}",
    "my friend recommended it",
    "i used it for a week",
    "{aspect} {verb} {neutral}",
    "{aspect} {verb} {neutral}",
)
JOIN_SAME = (" and ", " and ", ", also ", ". ", " but ")
JOIN_MIXED = (" but ", " but ", " although ", ", however ", " and ", ". ")


def _opinion(rng: random.Random, polarity: int) -> str:
    """One clause: positive (+1) or negative (-1); about a third negate the opposite word."""
    aspect, verb = rng.choice(ASPECTS), rng.choice(VERBS)
    if rng.random() < 0.35:  # negation: the adjective's own polarity is the wrong one
        word = rng.choice(NEGATIVE if polarity > 0 else POSITIVE)
        return f"{aspect} {verb} {rng.choice(NEGATORS)} {word}"
    word = rng.choice(POSITIVE if polarity > 0 else NEGATIVE)
    return f"{aspect} {verb} {rng.choice(INTENSIFIERS)}{word}"


def _fact(rng: random.Random) -> str:
    return rng.choice(FACTS).format(
        day=rng.choice(DAYS),
        aspect=rng.choice(ASPECTS),
        verb=rng.choice(VERBS),
        neutral=rng.choice(NEUTRAL),
    )


def _review(rng: random.Random, label: str) -> str:
    if label == "neutral":
        clauses = [_fact(rng) for _ in range(rng.randint(1, 2))]
        joins = JOIN_SAME
    elif label == "mixed":
        clauses = [_opinion(rng, +1), _opinion(rng, -1)]
        rng.shuffle(clauses)
        joins = JOIN_MIXED
    else:
        polarity = +1 if label == "positive" else -1
        clauses = [_opinion(rng, polarity) for _ in range(rng.randint(1, 2))]
        joins = JOIN_SAME
    if rng.random() < 0.4:  # a plain fact anywhere: neutral words appear in every class
        clauses.insert(rng.randint(0, len(clauses)), _fact(rng))
    text = clauses[0]
    for clause in clauses[1:]:
        text += rng.choice(joins) + clause
    return rng.choice(OPENERS) + text


def generate(n: int, seed: int = 0, noise: float = 0.05) -> list[tuple[str, str]]:
    """``n`` (text, label) pairs, classes balanced in expectation; a fraction ``noise`` of the
    labels replaced with another class."""
    if n < 1 or not 0.0 <= noise < 1.0:
        raise KdxError(f"synthetic data: need n >= 1 and 0 <= noise < 1, got n={n}, noise={noise}")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(CLASSES)
        text = _review(rng, label)
        # Both draws always happen, so the texts do not depend on ``noise``.
        flip, other = rng.random(), rng.choice([c for c in CLASSES if c != label])
        rows.append((text, other if flip < noise else label))
    return rows


def write_reviews(path: str | Path, n: int = 2000, seed: int = 0, noise: float = 0.05) -> Path:
    """Write ``generate(n, seed, noise)`` to ``path`` with columns ``text`` and ``label``: a .csv,
    .tsv or .jsonl file by its suffix, written atomically. The same arguments, the same bytes."""
    path = Path(path)
    rows = generate(n, seed, noise)
    if path.suffix in (".csv", ".tsv"):
        out = io.StringIO()
        writer = csv.writer(
            out, delimiter="," if path.suffix == ".csv" else "\t", lineterminator="\n"
        )
        writer.writerows([("text", "label"), *rows])
        body = out.getvalue()
    elif path.suffix == ".jsonl":
        body = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows)
    else:
        raise KdxError(f"{path}: write synthetic reviews to a .csv, .tsv or .jsonl file")
    write_text(path, body)
    return path
