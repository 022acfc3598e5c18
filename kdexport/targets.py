"""Deployment targets: profiles as data (one TOML per target in targets/), checked on load.

A profile names a backend, device, precision and backend options. ``load_target`` takes a
built-in name (``ort-cpu``) or the path of a user's own profile (``my-box.toml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kdexport.backends import backend
from kdexport.errors import KdxError
from kdexport.recipe import read_toml

_KEYS = {"description", "backend", "device", "precision", "tolerance", "options"}


@dataclass(frozen=True)
class Target:
    name: str
    backend: str
    device: str
    precision: str
    tolerance: float
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def unavailable_reason(self) -> str | None:
        """None when this machine can run the target, else why not and how to fix it."""
        try:
            return backend(self.backend, self.name).unavailable_reason(self)
        except KdxError as e:
            return str(e)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "tolerance": self.tolerance,
            "options": self.options,
        }


def _builtin_dir() -> Path:
    return Path(str(resources.files("kdexport._targets")))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in _builtin_dir().glob("*.toml"))


def load_target(name_or_path: str) -> Target:
    """A built-in target by name, or a profile from a .toml path."""
    if name_or_path.endswith(".toml"):
        path = Path(name_or_path)
    else:
        path = _builtin_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            raise KdxError(
                f"unknown target '{name_or_path}'; known: {', '.join(builtin_names())} (or a .toml path)"
            )
    raw = read_toml(path)
    unknown = set(raw) - _KEYS
    missing = {"backend", "device", "precision"} - set(raw)
    if unknown or missing:
        raise KdxError(f"{path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    return Target(
        name=path.stem,
        backend=raw["backend"],
        device=raw["device"],
        precision=raw["precision"],
        tolerance=float(raw.get("tolerance", 1e-4)),
        description=raw.get("description", ""),
        options=raw.get("options", {}),
    )
