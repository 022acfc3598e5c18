"""Backend name -> module, imported only when a target needs it.

Each backend module provides:
  unavailable_reason(target) -> str | None
  compile(onnx_path, out_dir, name, target) -> Path       (the compiled form's main file)
  load(compiled_path, target) -> Runner                   (see ``Runner`` below)
  RUNTIME, RUNTIME_ERRORS, explain(error) -> str          its name, what it raises for a model
                                                          it cannot run, and that as one line
  throughput_settings(target, cores) -> list[Throughput]  how to serve many requests at once
ONNX Runtime's CPU and CUDA targets are one backend with another execution provider.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple, Protocol

import numpy as np

from kdexport.errors import KdxError

ORT_INSTALL = "pip install 'kdexport[cpu]', or 'kdexport[gpu]' for CUDA (from a clone: pip install -e '.[cpu]')"
BACKENDS = {  # name -> (module, the package it needs, how to install that)
    "onnxruntime": ("kdexport.backends.ort", "onnxruntime", ORT_INSTALL),
    "openvino": ("kdexport.backends.openvino", "openvino", "pip install openvino"),
}


class Throughput(NamedTuple):
    """One way to serve concurrent requests on ``cores`` CPUs: the profile's options changed to
    ``options`` and ``workers`` requests in flight at once (0: as many as the runtime says it
    serves best, OpenVINO's optimal number of infer requests)."""

    label: str
    options: dict
    workers: int


class Runner(Protocol):
    """A loaded model on one target."""

    info: dict  # what actually runs: provider or device, executed precision, threads

    def run(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        """The first output for ``x`` (the first input's array, or input name -> array), end
        to end (input conversion and copies included)."""

    def bind(self, x: np.ndarray | dict[str, np.ndarray]) -> Callable[[], None]:
        """Bind ``x`` once; the returned call runs one inference and waits for it."""

    def workers(self, count: int) -> list[Callable[[np.ndarray | dict], np.ndarray]]:
        """``count`` run functions (0: the runtime's optimal number) that may be called at the
        same time, one per thread."""


def backend(name: str, target_name: str = "") -> ModuleType:
    """The backend module for ``name``, or a KdxError saying which package to install."""
    if name not in BACKENDS:
        raise KdxError(
            f"target '{target_name}': unknown backend '{name}'; known: {', '.join(BACKENDS)}"
        )
    module, package, install = BACKENDS[name]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise KdxError(
            f"target '{target_name}' needs the {package} package ({e}); {install}"
        ) from None


def import_onnxruntime(purpose: str) -> ModuleType:
    """The onnxruntime module (whichever build is installed), or a KdxError saying how to get it."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as e:
        raise KdxError(f"{purpose} needs the onnxruntime package ({e}); {ORT_INSTALL}") from None
