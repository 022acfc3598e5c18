"""How a stage reports progress: ``progress(stage, done, total, info)``; ``quiet`` says nothing."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int, str], None]


def quiet(stage: str, done: int, total: int, info: str) -> None:
    """A progress callback that reports nothing (the default outside the CLI)."""
