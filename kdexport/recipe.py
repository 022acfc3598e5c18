"""Recipes: one TOML file whose sections are the keyword arguments of the stage functions.

The caller (``pipeline.SECTIONS``) names the stage of each section; the schema is read off the
stage functions' signatures: a section's keys are the function's
keyword-only parameters, their defaults are the defaults, and ``Annotated[..., Range|OneOf]``
hints bound their values. Unknown sections or keys, wrong types and out-of-range values are
``KdxError``s raised before any stage runs.
"""

from __future__ import annotations

import difflib
import inspect
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdexport.errors import KdxError
from kdexport.options import read_toml

DEFAULT_RECIPE = "digits"


# section name -> the stage function whose options it holds (and the functions whose
# keyword-only parameters add keys to it: each modality's, kdexport.modalities)
Sections = dict[str, Callable | tuple[Callable, ...]]


def keys_of(fn: Callable) -> dict[str, tuple[Any, Any, list]]:
    """key -> (type, default, constraints) of ``fn``'s keyword-only parameters."""
    hints = typing.get_type_hints(fn, include_extras=True)
    keys = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not p.KEYWORD_ONLY:
            continue
        hint = hints[p.name]
        annotated = typing.get_origin(hint) is typing.Annotated
        base = hint.__origin__ if annotated else hint
        keys[p.name] = (base, p.default, list(hint.__metadata__) if annotated else [])
    return keys


def schema(sections: Sections) -> dict[str, dict[str, tuple[Any, Any, list]]]:
    """section -> key -> (type, default, constraints), read off each stage's keyword-only
    parameters."""
    out: dict[str, dict[str, tuple[Any, Any, list]]] = {}
    for section, fns in sections.items():
        out[section] = {}
        for fn in fns if isinstance(fns, tuple) else (fns,):
            out[section].update(keys_of(fn))
    return out


def _type_ok(value: Any, tp: Any) -> bool:
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    return isinstance(value, tp)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return f"a list like [{_TYPE_NAMES[typing.get_args(tp)[0]].split()[-1]}, ...]"
    return _TYPE_NAMES[tp]


def _unknown(kind: str, name: str, known: list[str], where: str) -> KdxError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(known))}"
    return KdxError(f"{where}: unknown {kind} '{name}' ({hint})")


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, value); value is read as TOML, else as a string."""
    lhs, sep, raw = text.partition("=")
    section, dot, key = lhs.strip().partition(".")
    if not sep or not dot or not key:
        raise KdxError(f"--set '{text}': expected section.key=value, e.g. distill.epochs=5")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key.strip(), value


# The built-in recipes sit beside this module, found the same way from a source tree, an
# editable install and a wheel (which ships them as package data).
BUILTIN_DIR = Path(__file__).resolve().parent / "recipes"


def builtin_recipe_path(name: str) -> Path:
    """The path of a recipe shipped in kdexport/recipes/ (e.g. 'digits')."""
    path = BUILTIN_DIR / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in BUILTIN_DIR.glob("*.toml")))
        raise KdxError(f"no built-in recipe '{name}'; known: {known}")
    return path


def load(
    sections: Sections,
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict:
    """Read a recipe (a file, or a built-in one by name; default: the built-in digits recipe),
    apply ``--set`` overrides, validate.

    Returns every section with every key filled in (defaults from the stage signatures).
    """
    path = Path(path) if path else builtin_recipe_path(DEFAULT_RECIPE)
    if not path.exists() and not path.suffix and len(path.parts) == 1:
        path = builtin_recipe_path(path.name)  # a built-in recipe by name: --recipe text
    raw = read_toml(path)
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})[key] = value
    return validate(raw, sections, where=str(path))


def validate(
    raw: dict[str, Any], sections: Sections, where: str = "recipe"
) -> dict[str, dict[str, Any]]:
    """Check sections, keys, types and ranges; return the complete recipe."""
    spec = schema(sections)
    for section, body in raw.items():
        if section not in spec:
            raise _unknown("section", section, list(spec), where)
        if not isinstance(body, dict):
            raise KdxError(f"{where}: '{section}' must be a table ([{section}])")
    recipe = {}
    for section, keys in spec.items():
        given = raw.get(section, {})
        for key in given:
            if key not in keys:
                raise _unknown("key", f"{section}.{key}", [f"{section}.{k}" for k in keys], where)
        recipe[section] = {}
        for key, (tp, default, constraints) in keys.items():
            value = given.get(key, default)
            if not _type_ok(value, tp):
                raise KdxError(f"{where}: {section}.{key} must be {_type_name(tp)}, got {value!r}")
            if tp is float:
                value = float(value)
            for c in constraints:
                if problem := c.check(value):
                    raise KdxError(f"{where}: {section}.{key} = {value!r} {problem}")
            recipe[section][key] = value
    return recipe


def dumps(recipe: dict[str, dict[str, Any]]) -> str:
    """The recipe as TOML text, loadable again with ``load``."""
    import tomli_w  # only here: the GPU check runs where tomli_w is not installed

    return tomli_w.dumps(recipe)
