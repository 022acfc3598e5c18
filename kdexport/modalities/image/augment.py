"""Image augmentation: a random view per image (a random resized crop and a horizontal flip),
drawn where the decoded file is at hand, then photometric changes on the batch on the model's
device (kornia: pure PyTorch, batched, the same on the CPU and on a GPU).

The names ``teacher.augment`` / ``distill.augment`` may give (``Image.augmentations``):

- ``shift``: each image moved by up to 1/8 of its side, zero-filled (small in-memory images);
- ``crop-flip``: a random resized crop (area share ``data.crop_scale``, aspect 3/4..4/3,
  torchvision's draw) and a flip with probability 1/2, as Inception and ResNet training do;
- ``crop-flip-jitter``: that, then colour jitter (brightness, contrast, saturation 0.4, hue 0.1
  for colour images; brightness and contrast for grey ones) with probability 0.8;
- ``randaugment``: crop and flip, then RandAugment (2 operations, magnitude 9 of 30 at most).

With any of the last three, ``data.mixup`` / ``data.cutmix`` (Beta alphas, 0: off; 0.2 and 1.0
are timm's habits) mix the batch last (``mixing``).

A streamed image source draws the crop and flip per file in the DataLoader worker, on the full
decoded image, seeded by the image's place in the epoch (``View.draw``); in-memory arrays get the same
crop and flip on the batch (kornia). The photometric part sees pixels in 0..1 (the batch's
``mean``/``std`` undone, then redone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kdexport.losses import MixedLabels
from kdexport.modalities.contract import Augmentation

RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class View:
    """What a reader draws per image: the crop's area share range, whether to flip."""

    scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True

    def draw(self, width: int, height: int, rng: np.random.Generator) -> tuple:
        """A random resized crop's box (left, top, right, bottom) and whether to flip: torchvision's
        ``RandomResizedCrop.get_params`` (ten tries at an area share in ``self.scale`` and a
        log-uniform aspect in 3/4..4/3, else the centre at the nearest aspect)."""
        area = width * height
        log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
        flip = bool(self.flip and rng.random() < 0.5)
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left = int(rng.integers(0, width - w + 1))
                top = int(rng.integers(0, height - h + 1))
                return (left, top, left + w, top + h), flip
        aspect = width / height
        if aspect < RATIO[0]:
            w, h = width, round(width / RATIO[0])
        elif aspect > RATIO[1]:
            w, h = round(height * RATIO[1]), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return (left, top, left + w, top + h), flip


def shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The ``shift`` augmentation: each sample moved by up to max(1, min(H, W) // 8) pixels,
    zero-filled."""
    n, _, h, w = x.shape
    m = max(1, min(h, w) // 8)
    dy, dx = (torch.randint(0, 2 * m + 1, (2, n), generator=gen)).to(x.device)
    rows = torch.arange(h, device=x.device)[None] + dy[:, None]
    cols = torch.arange(w, device=x.device)[None] + dx[:, None]
    i = torch.arange(n, device=x.device)[:, None, None]
    out = F.pad(x, (m, m, m, m)).permute(0, 2, 3, 1)[i, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _photometric(name: str, channels: int):
    """The kornia module of ``name``'s photometric part; pixels in 0..1."""
    import kornia.augmentation as K

    if name == "crop-flip-jitter":
        colour = (0.4, 0.1) if channels == 3 else (0.0, 0.0)
        return K.ColorJitter(0.4, 0.4, colour[0], colour[1], p=0.8)
    if name == "randaugment":
        from kornia.augmentation.auto import RandAugment

        return RandAugment(n=2, m=9)
    raise ValueError(name)


def _in_unit_range(name: str, mean: list[float], std: list[float]):
    """``name``'s photometric module (one per channel count) applied to normalised inputs:
    mean/std undone, then redone."""
    modules: dict[int, torch.nn.Module] = {}

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        channels = x.shape[1]
        if channels not in modules:
            modules[channels] = _photometric(name, channels)
        shape = (1, -1, 1, 1)
        m = torch.tensor(mean or [0.0], device=x.device).reshape(shape)
        s = torch.tensor(std or [1.0], device=x.device).reshape(shape)
        return ((modules[channels](x * s + m).clamp(0, 1)) - m) / s

    return apply


def _crop_flip(view: View):
    """The view's crop and flip on a batch of in-memory images (kornia)."""
    import kornia.augmentation as K

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        crop = K.RandomResizedCrop(tuple(x.shape[2:]), scale=view.scale, ratio=RATIO)
        return K.RandomHorizontalFlip()(crop(x)) if view.flip else crop(x)

    return apply


def mixing(mixup: float, cutmix: float):
    """Mixup (Zhang et al. 2018) and cutmix (Yun et al. 2019) as timm's ``Mixup`` applies them:
    per batch, one of the two (half the batches each when both are on), lam ~ Beta(alpha,
    alpha), each sample mixed with the batch in reverse order; cutmix pastes a box of area
    share 1 - lam (lam then corrected to the pasted area). Written here (20 lines) rather than
    taken from kornia because the labels must reach kdexport's CE term as ``MixedLabels``; the
    teacher sees the mixed batch (function matching). None when both are 0."""
    if not (mixup or cutmix):
        return None

    def apply(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
        use_cutmix = cutmix > 0 and (not mixup or torch.rand((), generator=gen) < 0.5)
        alpha = cutmix if use_cutmix else mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        other = x.flip(0)
        if use_cutmix:
            h, w = x.shape[2:]
            cut_h, cut_w = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
            cy = int(torch.randint(h, (), generator=gen))
            cx = int(torch.randint(w, (), generator=gen))
            top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            x = x.clone()
            x[:, :, top:bottom, left:right] = other[:, :, top:bottom, left:right]
            lam = 1 - (bottom - top) * (right - left) / (h * w)
        else:
            x = lam * x + (1 - lam) * other
        share = torch.full((len(y),), lam, device=x.device)
        return x, MixedLabels(y, y.flip(0), share)

    return apply


def augmentation(name: str, data: dict) -> Augmentation:
    """The augmentation ``name`` for a run whose [data] section is ``data``."""
    if name == "shift":
        return Augmentation(shift)
    view = View(tuple(data.get("crop_scale") or View.scale))
    geometry = _crop_flip(view)
    mix = mixing(data.get("mixup", 0.0), data.get("cutmix", 0.0))
    if name == "crop-flip":
        return Augmentation(None, view, geometry, mix)
    photometric = _in_unit_range(name, data.get("mean") or [], data.get("std") or [])

    def whole(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return photometric(geometry(x, gen), gen)

    return Augmentation(photometric, view, whole, mix)
