"""The modalities: what kind of input a run takes (image, text, speech), told, never sniffed.

``MODALITIES`` is the registry: a name and where its ``Modality`` lives (imported when first
asked for). A run names its modality in the recipe (``data.modality``); the export and bundle
manifests record it; every stage and ``run.py`` look it up there. A new modality is its own
folder with a ``Modality`` subclass (``kdexport.modalities.contract``) plus one line here.
"""

from __future__ import annotations

import importlib

from kdexport.errors import KdxError
from kdexport.modalities.contract import Modality

MODALITIES = {
    "image": "kdexport.modalities.image:IMAGE",
    "text": "kdexport.modalities.text:TEXT",
    "speech": "kdexport.modalities.speech:SPEECH",
}
DEFAULT = "image"


def get(name: str) -> Modality:
    """The registered modality ``name``, or one line naming the known ones."""
    where = MODALITIES.get(name)
    if where is None:
        known = ", ".join(sorted(MODALITIES))
        raise KdxError(f"unknown modality '{name}'; set data.modality to one of: {known}")
    module, _, attr = where.partition(":")
    return getattr(importlib.import_module(module), attr)


def every() -> list[Modality]:
    """Every registered modality, in the registry's order."""
    return [get(name) for name in MODALITIES]
