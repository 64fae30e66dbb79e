"""Train and evaluation transforms on batches of uint8 images, on whatever device the batch lives on.

Two separate, immutable classes: `EvalTransform` has no randomness at all, and `TrainTransform` draws its
random parameters from a generator the caller passes for each batch (seeded from run seed, epoch and batch
index), so no code path can give validation augmentation or take it from training, and a resumed run
draws the same augmentations as an uninterrupted one. Augmentation runs batched on tensors (one
`grid_sample` per batch for crop + flip + rotation) instead of PIL per image, so it costs almost nothing
on a GPU.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.preprocessing import Preprocessing
from data.seeds import batch_seed

AUGMENT_LEVELS = ("none", "standard", "strong")


@dataclass(frozen=True)
class _Policy:
    min_area: float  # RandomResizedCrop scale lower bound, a fraction of the working square's area
    flip: bool
    max_rotation_degrees: float
    color_jitter: float  # brightness/contrast/saturation factors drawn from [1-j, 1+j]


# torchvision's RandomResizedCrop defaults: aspect ratios in [3/4, 4/3], 10 tries before the fallback.
_LOG_RATIO_RANGE = (math.log(3 / 4), math.log(4 / 3))
_CROP_TRIES = 10

_POLICIES = {
    "standard": _Policy(min_area=0.35, flip=True, max_rotation_degrees=0.0, color_jitter=0.0),
    "strong": _Policy(min_area=0.08, flip=True, max_rotation_degrees=15.0, color_jitter=0.3),
}


def _to_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC batches (as stored) become an NCHW view; its strides are channels_last, which is free."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected a uint8 batch of shape (N, H, W, 3), got {tuple(images.shape)} {images.dtype}")
    return images.permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=16)
def _scale_shift(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Built once per device: a tensor made from a Python list on every batch would be a blocking copy."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1).to(device)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1).to(device)
    return scale, shift


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU-drawn random parameters to the batch's device without stalling the GPU queue."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _normalize(x: torch.Tensor, pre: Preprocessing, channels_last: bool) -> torch.Tensor:
    """x holds 0..255 floats; one fused multiply-add per pixel instead of /255, -mean, /std."""
    scale, shift = _scale_shift(tuple(pre.mean), tuple(pre.std), x.device)
    x = torch.addcmul(shift, x, scale)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@dataclass(frozen=True)
class EvalTransform:
    """Centre crop of `crop_size` from the working-resolution square, then normalisation. Deterministic.

    On squares from `decode_working(path, resize_size, interpolation, crop_size)` this gives the pixels of the
    weights' own transforms() (torchvision's Resize + CenterCrop), up to float rounding in the normalisation.
    """

    pre: Preprocessing
    channels_last: bool = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = _to_nchw(images)
        size, crop = x.shape[-1], self.pre.crop_size
        offset = int(round((size - crop) / 2.0))  # torchvision's CenterCrop rounding
        x = x[..., offset : offset + crop, offset : offset + crop].float()
        return _normalize(x, self.pre, self.channels_last)


@dataclass(frozen=True)
class TrainTransform:
    """Random resized crop, flip, rotation and colour jitter per image, by `level`; `none` = EvalTransform.

    The crop is torchvision's RandomResizedCrop over the cached working square (resize_size, e.g. 256 px for a
    224 crop), not over the original photo: scale [min_area, 1] of that square's area (0.35 `standard`, 0.08
    `strong`), aspect ratio [3/4, 4/3], resampled to crop_size with one bilinear `grid_sample`.
    """

    pre: Preprocessing
    level: str = "standard"
    channels_last: bool = False

    def __post_init__(self):
        if self.level not in AUGMENT_LEVELS:
            raise ValueError(f"augment level {self.level!r} not in {AUGMENT_LEVELS}")

    @property
    def is_random(self) -> bool:
        return self.level != "none"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.is_random:
            return EvalTransform(self.pre, self.channels_last)(images)
        policy = _POLICIES[self.level]
        x = _to_nchw(images).float()
        batch = x.shape[0]
        theta = _to_device(self._affine(batch, policy, generator), x.device)
        grid = F.affine_grid(theta, [batch, 3, self.pre.crop_size, self.pre.crop_size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if policy.color_jitter > 0:
            x = self._jitter(x, policy.color_jitter, generator)
        return _normalize(x, self.pre, self.channels_last)

    @staticmethod
    def _affine(batch: int, policy: _Policy, generator: torch.Generator) -> torch.Tensor:
        """Per-image 2x3 matrices mapping output to input coordinates in [-1, 1], the square being [-1, 1]^2.

        RandomResizedCrop's sampling, for every image at once: 10 candidate (area, log-ratio) pairs, area a
        fraction of the square in [min_area, 1] and ratio in [3/4, 4/3]; the first candidate whose width and
        height both fit in the square wins, and an image with none gets the whole square (torchvision's
        fallback for a square input). A crop that does not fit is redrawn, never clamped: clamping would skew
        its area and aspect ratio.
        """
        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return low + (high - low) * torch.rand(batch, *shape, generator=generator)

        area = uniform(policy.min_area, 1.0, _CROP_TRIES)
        ratio = torch.exp(uniform(*_LOG_RATIO_RANGE, _CROP_TRIES))
        widths, heights = torch.sqrt(area * ratio), torch.sqrt(area / ratio)  # fractions of the square's side
        fits = (widths <= 1.0) & (heights <= 1.0)
        first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first of equal maxima
        found = fits.any(dim=1)
        width = torch.where(found, widths.gather(1, first).squeeze(1), 1.0)
        height = torch.where(found, heights.gather(1, first).squeeze(1), 1.0)
        center_x = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - width)
        center_y = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - height)
        flip = (torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0) if policy.flip
                else torch.ones(batch))
        angle = uniform(-1.0, 1.0) * math.radians(policy.max_rotation_degrees)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack([width * cos * flip, -height * sin, center_x], dim=1),
                torch.stack([width * sin * flip, height * cos, center_y], dim=1),
            ],
            dim=1,
        )
        return theta

    @staticmethod
    def _jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
        batch = x.shape[0]
        factors = _to_device(1 - strength + 2 * strength * torch.rand(3, batch, 1, 1, 1, generator=generator), x.device)
        brightness, contrast, saturation = factors
        x = x * brightness
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray.mean(dim=(2, 3), keepdim=True)) * contrast + gray.mean(dim=(2, 3), keepdim=True)
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = gray + (x - gray) * saturation
        return x.clamp_(0.0, 255.0)


def batch_generator(seed: int, epoch: int, batch_index: int) -> torch.Generator:
    """The augmentation randomness of one batch depends on (seed, epoch, batch) only: resumes reproduce it."""
    return torch.Generator().manual_seed(batch_seed(seed, epoch, batch_index))
