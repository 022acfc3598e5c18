"""Option types shared by the stages, the recipe reader and the target profiles.

``Annotated[int, Range(1, 100)]`` and ``Annotated[str, OneOf(...)]`` hints on a stage's keyword
parameters bound the values a recipe may give; ``read_toml`` reads any of kdexport's TOML files
with one clear line for every failure.
"""

from __future__ import annotations

import inspect
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdexport.errors import KdxError


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric option; ``lo_open`` excludes ``lo`` itself (e.g. temperature > 0)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False

    def check(self, value: Any) -> str | None:
        values = value if isinstance(value, list) else [value]
        for v in values:
            if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
                return f"must be {'>' if self.lo_open else '>='} {self.lo}"
            if self.hi is not None and v > self.hi:
                return f"must be <= {self.hi}"
        return None


@dataclass(frozen=True)
class OneOf:
    """The allowed values of a string option."""

    choices: tuple[str, ...]

    def check(self, value: Any) -> str | None:
        return None if value in self.choices else f"must be one of {', '.join(self.choices)}"


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into one clear line."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KdxError(f"{path}: no such file; pass an existing recipe .toml") from None
    except IsADirectoryError:
        raise KdxError(f"{path}: is a directory; pass a recipe .toml file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KdxError(f"{path}: cannot read it ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise KdxError(f"{path}: not valid TOML ({e})") from None


def stage_options(fn: Callable, values: dict) -> dict:
    """The recipe options of stage ``fn`` (its keyword-only parameters), from its ``locals()``."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: values[p.name] for p in params if p.kind is p.KEYWORD_ONLY}
