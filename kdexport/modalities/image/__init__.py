"""Images: float32 (N, C, H, W) model inputs, one ONNX input named ``input`` with a batch axis.

Sources (``data.source``, and ``data.transfer`` for extra unlabeled inputs). In memory
(``sources``): ``digits`` (scikit-learn's 8x8 handwritten digits), ``file.npz`` with arrays
``x`` and ``y``, ``file.py:factory`` returning a torch ``Dataset`` of ``(x, y)``. Streamed
(listed, decoded in DataLoader workers, uint8 until the model's device): an image folder (one
sub-folder per class; a transfer folder: images anywhere below it), a ``.csv``/``.jsonl``
manifest of ``path,label`` rows, WebDataset ``.tar`` shards (``shards``), and ``x.npy``
memory-mapped (labels from ``y.npy`` beside it). File images are decoded as ``run.py`` decodes
them, in ``image_mode``, resized to ``image_size`` by the evaluation transform
(``crop_fraction``), pixels scaled to 0..1. ``mean``/``std`` normalise each channel. Training
augmentations: ``augment``. Model specs ``torchvision:NAME`` and ``timm:NAME`` (``families``;
extra ``vision``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from kdexport.errors import KdxError
from kdexport.modalities.contract import Augmentation, Modality, Source
from kdexport.options import OneOf, Range


def image_data(
    *,
    image_size: Annotated[list[int], Range(1)] = [],  # noqa: B006 (never mutated)
    image_mode: Annotated[str, OneOf(("L", "RGB"))] = "L",
    mean: list[float] = [],  # noqa: B006 (never mutated)
    std: list[float] = [],  # noqa: B006 (never mutated)
    crop_fraction: Annotated[float, Range(0.0, 1.0)] = 0.0,
    crop_scale: Annotated[list[float], Range(0.0, 1.0, lo_open=True)] = [0.08, 1.0],  # noqa: B006
    mixup: Annotated[float, Range(0.0, 10.0)] = 0.0,
    cutmix: Annotated[float, Range(0.0, 10.0)] = 0.0,
) -> None:
    """The image keys of [data]: ``image_size`` [H, W] to resize file images to (``[]``: as
    they are), ``image_mode`` ``L`` (grey) or ``RGB``, per-channel ``mean``/``std``. The
    evaluation transform: ``crop_fraction`` 0 resizes the whole image to ``image_size``; a
    fraction resizes it to cover image_size / crop_fraction (aspect kept) and crops the centre
    (timm's crop_pct: 0.875). ``crop_scale``: the area share range of the training crops
    (``augment = "crop-flip"``, ``augment``); ``mixup``/``cutmix``: their Beta alphas (0: off)
    with those augmentations."""


class Image(Modality):
    name = "image"
    default_student = "zoo:digits-cnn-small"
    options = {"data": image_data}
    augmentations = ("shift", "crop-flip", "crop-flip-jitter", "randaugment")  # see augment

    @property
    def schemes(self) -> dict:
        from kdexport.modalities.image.families import SCHEMES

        return SCHEMES

    def _augmentation(self, name: str, options: dict) -> Augmentation:
        from kdexport.modalities.image.augment import augmentation

        return augmentation(name, options)

    def check_options(self, data: dict) -> None:
        if data["image_size"] and len(data["image_size"]) != 2:
            raise KdxError(f"data.image_size = {data['image_size']} must be [H, W]")
        scale = data["crop_scale"]
        if len(scale) != 2 or scale[0] > scale[1]:
            raise KdxError(f"data.crop_scale = {scale} must be [low, high] with low <= high")
        if data["crop_fraction"] and not data["image_size"]:
            raise KdxError("data.crop_fraction needs data.image_size = [H, W] (the crop's size)")

    def read(self, spec: str, options: dict, labeled: bool, cache_dir: Path) -> Source:
        """One source in any of the forms ``sources`` and ``shards`` read, normalised by
        ``mean``/``std`` (arrays in memory here, streamed ones where the model runs)."""
        from kdexport.modalities.image import sources
        from kdexport.modalities.inputs import ArrayInputs, Finish, StreamedInputs

        src = _source(spec, options, labeled)
        mean, std = tuple(options["mean"]), tuple(options["std"])
        sources.check_stats(src.x, mean, std)
        if isinstance(src.x, ArrayInputs) and (mean or std):
            src.x = ArrayInputs(Finish(1.0, mean, std).numpy(src.x.array))
        elif isinstance(src.x, StreamedInputs):
            src.x.finisher = Finish(src.x.finisher.scale, mean, std)
        src.preprocessing.update({k: options[k] for k in ("mean", "std") if options[k]})
        return src

    def bundle_preprocessing(self, recorded: dict, input_spec: dict) -> dict:
        """Completed with what an image needs to match the training inputs."""
        pre = {"layout": "NCHW", "scale": None, "mean": None, "std": None, **recorded}
        shape = input_spec["shape"]
        if len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[1:]):
            pre.setdefault("resize", shape[2:])  # height, width
            # 8-bit pixels to [0, 1], the range of the training inputs before mean/std.
            pre.setdefault("image_scale", 1 / 255)
        return pre


def _source(spec: str, options: dict, labeled: bool) -> Source:
    from kdexport.modalities.image import sources

    path = Path(spec)
    if spec == "digits":
        return sources.digits()
    if ".py:" in spec:
        return sources.dataset(spec)
    if path.is_dir() or (path.is_file() and path.suffix.lower() in sources.MANIFEST_SUFFIXES):
        return sources.image_files(spec, options, labeled)
    if path.suffix == ".npz" and path.is_file():
        return sources.npz(path)
    if path.suffix == ".npy" and path.is_file():
        return sources.mapped(path, options["workers"])
    if path.suffix == ".tar" or "{" in spec:
        from kdexport.modalities.image.shards import shards

        return shards(spec, options, labeled)
    if path.suffix in (".npz", ".npy", *sources.MANIFEST_SUFFIXES):
        raise KdxError(f"data source {spec}: no such file; give an existing file or 'digits'")
    missing = "" if path.exists() else f"{path} does not exist; "
    raise KdxError(
        f"data source '{spec}': {missing}use digits, an image folder, a .csv/.jsonl "
        "manifest, .tar shards, a .npz or .npy file, or file.py:factory"
    )


IMAGE = Image()
