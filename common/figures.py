"""PNG figures of a test evaluation (`agent.py test RUN`): the confusion matrix and the prediction grid, and the
one way a figure is saved. Here, below both the trainer and the report, so each imports it downward.

Agg backend: evaluations and reports run on headless machines, where a GUI backend fails at import.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from common.atomic import atomic_write

DPI = 110


def save(figure, path: Path) -> Path:
    """Written like every record: atomically, so a kill or a full disk never leaves half a PNG behind."""
    path = Path(path)
    try:
        atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=DPI, bbox_inches="tight"), mode="wb")
    finally:
        plt.close(figure)
    return path


def plot_confusion(matrix: np.ndarray, class_names, path: Path) -> Path:
    """Rows are true classes, colour is the row-normalised rate (recall per class), text is the count."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix of shape {matrix.shape} does not match {len(class_names)} classes")
    totals = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    size = max(5.0, 0.55 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            axis.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                      color="white" if rates[i, j] > 0.5 else "black")
    axis.set_xticks(range(len(class_names)))
    axis.set_xticklabels(class_names, rotation=45, ha="right")
    axis.set_yticks(range(len(class_names)))
    axis.set_yticklabels(class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title("Test-set confusion (colour: fraction of the true class; text: count)")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return save(figure, path)


def plot_prediction_grid(images, true_names, pred_names, path: Path, rows: int = 10, cols: int = 3) -> Path:
    """A rows x cols grid of test images with their predicted class; wrong ones in red with the truth."""
    if not len(images) == len(true_names) == len(pred_names):
        raise ValueError(f"{len(images)} images, {len(true_names)} true and {len(pred_names)} predicted names")
    figure, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.9 * rows), squeeze=False)
    shown = list(zip(images, true_names, pred_names))[: rows * cols]
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image, true_name, pred_name) in zip(axes.flat, shown):
        axis.imshow(np.asarray(image, dtype=np.uint8))
        if true_name == pred_name:
            axis.set_title(str(pred_name), fontsize=9, color="black")
        else:
            axis.set_title(f"{pred_name}\n(true: {true_name})", fontsize=9, color="red")
            for side in axis.spines.values():
                side.set_visible(True)
                side.set_color("red")
                side.set_linewidth(3)
            axis.axis("on")
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle("Test-set predictions (red: wrong, with the true class)")
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (2.9 * rows)))  # leave room for the title above the first labels
    return save(figure, path)
