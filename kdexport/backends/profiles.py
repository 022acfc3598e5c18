"""Deployment targets: profiles as data (one TOML per target in kdexport/targets/), checked on load.

A profile names a backend, device, precision and backend options, and for INT8 the
quantization settings. ``load_target`` takes a built-in name (``ort-cpu``) or the path of a
user's own profile (``my-box.toml``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdexport.backends import backend
from kdexport.errors import KdxError
from kdexport.options import read_toml

# precision -> (atol, rtol, min top-1 agreement) against PyTorch: every output element must be
# within atol + rtol·|PyTorch's| (numpy's allclose). fp32 keeps 1e-4 absolute. The others come
# from measurements of the default teacher and student (logits up to about 21; README, "Parity
# bounds"), with margin: fp16 needed atol <= 0.012 at rtol 1e-2 (0.0145 max abs on an H200);
# bf16 <= 0.054 at rtol 2e-2; INT8 <= 0.81 at rtol 0.1 (OpenVINO; 0.16 ONNX Runtime). An INT8
# model also passes the quantization gate (accuracy drop and speed) before it ships. OpenVINO's
# GPU profiles (openvino-auto-gpu, openvino-hetero-gpu) are fp16, as that GPU runs by default:
# the fp16 bound, measured on CUDA, not yet on an Intel GPU (none here).
PARITY = {
    "fp32": (1e-4, 0.0, 1.0),
    "fp16": (2e-2, 1e-2, 0.995),
    "bf16": (0.1, 2e-2, 0.99),
    "int8": (1.5, 0.1, 0.98),
}
QUANTIZATION = {  # key -> default; the INT8 options a profile may set in [quantization]
    "calibration_samples": 300,
    "method": "minmax",
    "per_channel": True,
    "max_accuracy_drop": 0.01,
}
_KEYS = {
    "description",
    "backend",
    "device",
    "precision",
    "atol",
    "rtol",
    "min_agreement",
    "options",
    "quantization",
}


@dataclass(frozen=True)
class Target:
    name: str
    backend: str
    device: str
    precision: str
    atol: float | None = None
    rtol: float = 0.0
    min_agreement: float | None = None
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)

    def unavailable_reason(self) -> str | None:
        """None when this machine can run the target, else why not and how to fix it."""
        try:
            return backend(self.backend, self.name).unavailable_reason(self)
        except KdxError as e:
            return str(e)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Target:
        """A target as ``as_dict`` recorded it in a manifest (keys of older versions ignored)."""
        return cls(**{k: v for k, v in record.items() if k in cls.__dataclass_fields__})


# The built-in profiles sit beside this module: one lookup for a source tree, an editable
# install and a wheel (which ships them as package data).
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "targets"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def load_target(name_or_path: str) -> Target:
    """A built-in target by name, or a profile from a .toml path."""
    if name_or_path.endswith(".toml"):
        path = Path(name_or_path)
    else:
        path = BUILTIN_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise KdxError(
                f"unknown target '{name_or_path}'; known: {', '.join(builtin_names())} (or a .toml path)"
            )
    raw = read_toml(path)
    if "tolerance" in raw:
        raise KdxError(
            f"{path}: 'tolerance' is now 'atol' (with 'rtol': |a - b| <= atol + rtol·|b|)"
        )
    unknown, missing = set(raw) - _KEYS, {"backend", "device", "precision"} - set(raw)
    if unknown or missing:
        raise KdxError(f"{path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    precision = raw["precision"]
    if precision not in PARITY:
        raise KdxError(f"{path}: unknown precision '{precision}'; use one of {', '.join(PARITY)}")
    quant = raw.get("quantization", {})
    if set(quant) - set(QUANTIZATION):
        raise KdxError(
            f"{path}: unknown [quantization] keys {sorted(set(quant) - set(QUANTIZATION))}"
        )
    atol, rtol, agreement = PARITY[precision]
    return Target(
        name=path.stem,
        backend=raw["backend"],
        device=raw["device"],
        precision=precision,
        atol=raw.get("atol", atol),
        rtol=raw.get("rtol", rtol),
        min_agreement=raw.get("min_agreement", agreement),
        description=raw.get("description", ""),
        options=raw.get("options", {}),
        quantization={**QUANTIZATION, **quant} if precision == "int8" else {},
    )
