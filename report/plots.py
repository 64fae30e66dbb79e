"""PNG figures of a report. They draw numbers computed elsewhere, never compute (a test evaluation's own figures are
common/figures.py's, which the trainer draws too).

Accuracies are fractions in the table and drawn as percent. Agg backend: reports are built on headless
machines, and a GUI backend there fails at import.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from common.figures import save as _save
from report.stats import Summary, strategy_sort_key
from report.table import SCRATCH_MODEL, RunRecord
from trainer import metrics


def _model_colors(models) -> dict:
    palette = plt.get_cmap("tab10").colors
    return {model: palette[i % len(palette)] for i, model in enumerate(sorted(set(map(str, models))))}


def _strategy_label(record: RunRecord) -> str:
    return str(record.strategy) if record.strategy is not None else "(none)"


# --- report figures ---------------------------------------------------------------------------------

def plot_val_acc_by_strategy(summary: Summary, path: Path) -> Path:
    """One panel per model: a box over finished runs per strategy, every run a dot; early-stopped runs
    are hollow and outside the box, as they are outside the means."""
    models = sorted({str(r.model_label) for r in summary.successful},
                    key=lambda m: strategy_sort_key(m, None))
    columns = min(len(models), 3)
    rows = -(-len(models) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), sharey=True,
                                squeeze=False)
    jitter = np.random.default_rng(0)  # fixed: the same table draws the same figure
    for axis, model in zip(axes.flat, models):
        records = [r for r in summary.successful if str(r.model_label) == model]
        strategies = sorted({r.strategy for r in records}, key=lambda s: strategy_sort_key(model, s))
        for position, strategy in enumerate(strategies):
            members = [r for r in records if r.strategy == strategy]
            finished = [r.best_val_acc * 100 for r in members if r.is_complete]
            if finished:
                axis.boxplot([finished], positions=[position], widths=0.5, showfliers=False,
                             medianprops={"color": "black"})
            for record in members:
                x = position + jitter.uniform(-0.12, 0.12)
                hollow = not record.is_complete
                axis.scatter(x, record.best_val_acc * 100, s=28, zorder=3,
                             facecolors="none" if hollow else "tab:blue", edgecolors="tab:blue")
        axis.set_xticks(range(len(strategies)))
        axis.set_xticklabels([str(s) if s is not None else "(none)" for s in strategies], rotation=30,
                             ha="right")
        axis.set_title(model)
        axis.grid(axis="y", alpha=0.3)
    for axis in axes.flat[len(models):]:
        axis.set_visible(False)
    for axis in axes[:, 0]:
        axis.set_ylabel(f"best {metrics.VAL_ACC} (%)")
    figure.suptitle("Validation accuracy by freezing strategy (hollow: early-stopped, not in the box)")
    figure.tight_layout()
    return _save(figure, path)


def plot_cost(summary: Summary, path: Path) -> Path:
    """Accuracy against training time and against trainable parameters, Pareto fronts joined."""
    memory = any(r.peak_gpu_memory is not None for r in summary.successful)  # CUDA runs: a third cost, memory
    figure, axes = plt.subplots(1, 3 if memory else 2, figsize=(18 if memory else 12, 4.6), sharey=True)
    colors = _model_colors(r.model_label for r in summary.successful)
    panels = [
        (axes[0], lambda r: r.train_seconds, summary.pareto_seconds, "training time (s)"),
        (axes[1], lambda r: r.trainable_params, summary.pareto_params, "trainable parameters (log)"),
    ]
    if memory:
        panels.append((axes[2], lambda r: r.peak_gpu_memory, summary.pareto_memory, "peak GPU memory (GiB)"))
    for axis, cost, front, label in panels:
        records = [r for r in summary.successful if cost(r) is not None]
        for model in sorted(colors):
            members = [r for r in records if str(r.model_label) == model]
            if members:
                axis.scatter([cost(r) for r in members], [r.best_val_acc * 100 for r in members],
                             color=colors[model], label=model, s=30, alpha=0.8, zorder=2)
        optimal = sorted((r for r in records if r.run_id in front), key=lambda r: (cost(r), -r.best_val_acc))
        if optimal:
            axis.step([cost(r) for r in optimal], [r.best_val_acc * 100 for r in optimal], where="post",
                      color="black", linewidth=1, zorder=1)
            axis.scatter([cost(r) for r in optimal], [r.best_val_acc * 100 for r in optimal], s=110,
                         facecolors="none", edgecolors="black", linewidths=1.5, zorder=3, label="Pareto-optimal")
            for record in optimal:  # the resolution beside the id: at 352 px the same recipe costs 2.5x of 224
                label_text = f"{record.run_id} ({record.size_label} px)" if record.size_label else record.run_id
                axis.annotate(label_text, (cost(record), record.best_val_acc * 100), fontsize=7,
                              xytext=(4, -10), textcoords="offset points")
        costs = [cost(r) for r in records if cost(r) > 0]
        if costs and (label.startswith("trainable") or max(costs) / min(costs) > 20):
            axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(f"best {metrics.VAL_ACC} (%)")
    labelled = [axis for axis in axes if axis.get_legend_handles_labels()[0]]  # a panel with no cost recorded has none
    if labelled:
        labelled[-1].legend(fontsize=8, loc="lower right")
    figure.suptitle("Accuracy against cost (up and left is better)")
    figure.tight_layout()
    return _save(figure, path)


def plot_learning_curves(summary: Summary, path: Path) -> Path:
    """The best run of each strategy: val_acc solid, train_acc dashed, the best epoch ringed."""
    figure, axis = plt.subplots(figsize=(8, 4.8))
    palette = plt.get_cmap("tab10").colors
    for index, record in enumerate(summary.best_per_strategy):
        color = palette[index % len(palette)]
        epochs = [row[metrics.EPOCH] for row in record.history]
        val = [row.get(metrics.VAL_ACC) for row in record.history]
        train = [row.get(metrics.TRAIN_ACC) for row in record.history]
        name = "scratch_cnn" if record.is_scratch else f"{_strategy_label(record)} ({record.model_label})"
        axis.plot(epochs, [np.nan if v is None else v * 100 for v in val], color=color, marker=".",
                  label=f"{name}, {record.run_id}")
        if any(t is not None for t in train):
            axis.plot(epochs, [np.nan if t is None else t * 100 for t in train], color=color,
                      linestyle="--", alpha=0.7)
        if record.best_epoch is not None:
            axis.scatter([record.best_epoch], [record.best_val_acc * 100], s=90, facecolors="none",
                         edgecolors=color, linewidths=1.5, zorder=3)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    axis.set_xlabel(metrics.EPOCH)
    axis.set_ylabel("accuracy (%)")
    axis.set_title("Best run per strategy: val (solid), train (dashed), best epoch ringed")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return _save(figure, path)


def plot_data_efficiency(summary: Summary, path: Path) -> Path:
    """Accuracy against images per class for each arm, with 95% intervals over seeds: the plot people look at."""
    protocol = summary.protocol
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    arms = sorted({p.arm for p in protocol.curve}, key=lambda a: (a == SCRATCH_MODEL, a))
    colors = _model_colors(arms)
    for arm in arms:
        points = sorted((p for p in protocol.curve if p.arm == arm and p.values), key=lambda p: p.images_per_class)
        if not points:
            continue
        x = [p.images_per_class for p in points]
        y = [(p.ci.mean if p.ci else p.values[0]) * 100 for p in points]
        low = [(p.ci.mean - p.ci.low) * 100 if p.ci else 0 for p in points]
        high = [(p.ci.high - p.ci.mean) * 100 if p.ci else 0 for p in points]
        axis.errorbar(x, y, yerr=[low, high], color=colors[arm], marker="o", capsize=3, linewidth=1.5,
                      linestyle="--" if arm == SCRATCH_MODEL else "-", label=arm)
    for crossover in protocol.crossovers:
        if crossover.line_at is not None:
            axis.axvline(crossover.line_at, color="grey", linewidth=0.8, linestyle=":")
    axis.set_xscale("log")
    axis.set_xlabel("training images per class (log)")
    axis.set_ylabel(
        ("test accuracy" if protocol.curve_metric == metrics.TEST_ACC else f"best {metrics.VAL_ACC}") + " (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    axis.set_title("Is fine-tuning worth it? Accuracy against data (95% intervals over seeds)")
    figure.tight_layout()
    return _save(figure, path)


def plot_importance(summary: Summary, path: Path) -> Path:
    rows = list(reversed(summary.importance or []))
    figure, axis = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
    names = [row.parameter + (f" (+{len(row.stands_for)})" if row.stands_for else "") for row in rows]
    axis.barh(names, [row.importance for row in rows], color="tab:blue")
    for y, row in enumerate(rows):
        if row.correlation is not None:
            axis.annotate(f"rank corr {row.correlation:+.2f}", (row.importance, y), xytext=(4, 0),
                          textcoords="offset points", va="center", fontsize=8)
    axis.set_xlabel(f"random-forest importance for best {metrics.VAL_ACC}")
    axis.set_xlim(0, max([row.importance for row in rows] + [0.01]) * 1.35)
    axis.set_title("Hyperparameter importance (successful runs; +n: parameters folded in)")
    figure.tight_layout()
    return _save(figure, path)
