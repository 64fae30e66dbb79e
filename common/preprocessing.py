"""Input geometry and normalisation of a model, as plain values: models/ produce it, data/ consume it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Preprocessing:
    """What a backbone's weights expect: read from the weights metadata, never hard-coded.

    `resize_size` is the short side images are resized to before the centre crop of `crop_size`
    (torchvision's ImageClassification preset); it is also the working resolution of the image cache.
    """

    crop_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # "bilinear" or "bicubic"

    def __post_init__(self):
        if self.resize_size < self.crop_size:
            raise ValueError(f"resize_size {self.resize_size} < crop_size {self.crop_size}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"unknown interpolation {self.interpolation!r}")

    def as_record(self) -> dict[str, Any]:
        """Plain values (lists, not tuples) for checkpoints and summaries, compared as written."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_record(cls, record: Any) -> Preprocessing | None:
        """The preprocessing a run recorded, or None when `record` is missing or not one (older runs)."""
        if not isinstance(record, dict):
            return None
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})
        except (TypeError, ValueError):
            return None
