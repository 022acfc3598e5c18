"""Images: float32 (N, C, H, W) arrays, one ONNX input named ``input`` with a batch axis.

Sources (``data.source``, and ``data.transfer`` for extra unlabeled inputs; ``sources``):
``digits`` (scikit-learn's 8x8 handwritten digits), ``file.npz`` with arrays ``x`` and ``y``,
an image folder (one sub-folder per class of PNG/JPEG files; a transfer folder: images anywhere
below it) resized to ``image_size`` in ``image_mode``, pixels scaled to 0..1, and
``file.py:factory`` returning a torch ``Dataset`` of ``(x, y)``. ``mean``/``std`` normalise
each channel. Model specs ``torchvision:NAME`` and ``timm:NAME`` (``families``; extra ``vision``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from kdexport.errors import KdxError
from kdexport.modalities.contract import Modality, Source
from kdexport.options import OneOf, Range


def image_data(
    *,
    image_size: Annotated[list[int], Range(1)] = [],  # noqa: B006 (never mutated)
    image_mode: Annotated[str, OneOf(("L", "RGB"))] = "L",
    mean: list[float] = [],  # noqa: B006 (never mutated)
    std: list[float] = [],  # noqa: B006 (never mutated)
) -> None:
    """The image keys of [data]: ``image_size`` [H, W] to resize folder images to (``[]``:
    as they are), ``image_mode`` ``L`` (grey) or ``RGB``, per-channel ``mean``/``std``."""


class Image(Modality):
    name = "image"
    default_student = "zoo:digits-cnn-small"
    options = {"data": image_data}
    augmentations = ("shift",)

    @property
    def schemes(self) -> dict:
        from kdexport.modalities.image.families import SCHEMES

        return SCHEMES

    def _augmentation(self, name: str, options: dict):
        from kdexport.modalities.image.augment import shift

        return shift

    def check_options(self, data: dict) -> None:
        if data["image_size"] and len(data["image_size"]) != 2:
            raise KdxError(f"data.image_size = {data['image_size']} must be [H, W]")

    def read(self, spec: str, options: dict, labeled: bool, cache_dir: Path) -> Source:
        from kdexport.modalities.image.sources import read_image_source

        return read_image_source(spec, options, labeled)

    def bundle_preprocessing(self, recorded: dict, input_spec: dict) -> dict:
        """Completed with what an image needs to match the training inputs."""
        pre = {"layout": "NCHW", "scale": None, "mean": None, "std": None, **recorded}
        shape = input_spec["shape"]
        if len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[1:]):
            pre.setdefault("resize", shape[2:])  # height, width
            # 8-bit pixels to [0, 1], the range of the training inputs before mean/std.
            pre.setdefault("image_scale", 1 / 255)
        return pre


IMAGE = Image()
