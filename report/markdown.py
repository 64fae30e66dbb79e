"""Format a `Summary` as report.md: GitHub-readable markdown, images linked relative to the report."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np

from report.stats import MIN_RUNS_FOR_IMPORTANCE, DifferenceCI, MeanCI, SeedGroup, Summary, strategy_order
from report.table import (
    CHECKPOINT,
    IMAGENET,
    NUM_IMAGES,
    PER_CLASS_ACC,
    SCRATCH,
    SCRATCH_MODEL,
    RunRecord,
    failure_reason,
)
from trainer import metrics

# Keys a reader looks at first when a config is spelled out; the rest follow alphabetically.
_CONFIG_FIRST = ("model", "weights", "input_size", "eval_size", "strategy", "k_layers", "freeze_fraction", "lr",
                 "backbone_lr_mult", "augment", "epochs", "batch_size", "optimizer", "seed")


# --- cell formatting --------------------------------------------------------------------------------

def percent(fraction: float | None) -> str:
    return "–" if fraction is None else f"{fraction * 100:.2f}%"


def points(difference: float | None) -> str:
    return "–" if difference is None else f"{difference:+.2f} points"


def _bound(value: float, floor: float, ceiling: float, sign: str = "") -> str:
    """An interval bound in points, clipped to the scale: a t interval over a few seeds can run past 0 % or 100 %,
    and a clipped bound says so."""
    shown = min(max(value, floor), ceiling)
    return f"{shown:{sign}.2f}" + (" (clipped)" if shown != value else "")


def ci_text(ci: MeanCI) -> str:
    if ci.no_spread:
        return f"{ci.mean * 100:.2f}% (all {ci.n} runs equal: no spread, so no interval)"
    return (f"{ci.mean * 100:.2f}% ± {ci.half_width * 100:.2f} ({ci.confidence:.0%} CI "
            f"[{_bound(ci.low * 100, 0, 100)}, {_bound(ci.high * 100, 0, 100)}], t with n={ci.n})")


def difference_ci_text(ci: DifferenceCI) -> str:
    if ci.no_spread:
        return "every run on both sides equal: no spread, so no interval"
    return (f"{ci.confidence:.0%} CI [{_bound(ci.low * 100, -100, 100, '+')}, "
            f"{_bound(ci.high * 100, -100, 100, '+')}], Welch t with {ci.df:.1f} df")


def no_claim(gap: DifferenceCI, what: str) -> str:
    """Why a gap is not called a difference: its interval holds 0, or it has none."""
    if gap.no_spread:
        return f": **how sure this gap is cannot be said from these {what}**."
    return f", an interval that holds 0: **not distinguishable with these {what}**."


def _value(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _memory(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(map(_cell, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def config_text(config: dict) -> str:
    """Non-null effective keys, the telling ones first: nulls are parameters that do not apply."""
    keys = [k for k in _CONFIG_FIRST if k in config] + sorted(k for k in config if k not in _CONFIG_FIRST)
    return ", ".join(f"`{k}={_value(config[k])}`" for k in keys if config[k] is not None)


def _epochs(record: RunRecord) -> str:
    text = f"{_value(record.best_epoch)}/{_value(record.epochs_completed)}"
    return text + " (early-stopped)" if record.state == metrics.EARLY_STOPPED else text


def _strategy(record: RunRecord) -> str:
    return _value(record.strategy)


# --- sections ---------------------------------------------------------------------------------------

def _start_text(record: RunRecord) -> str:
    """Where a warm start began: the file by name and content hash."""
    version = record.summary.get(metrics.WEIGHTS_VERSION) or record.config.get("weights") or "?"
    version = str(version).removeprefix("file:")
    return f"`{version}`" + (f" (sha256 `{record.weights_sha256[:12]}`)" if record.weights_sha256 else "")


def _headline(s: Summary) -> list[str]:
    out = ["## 1. Headline: fine-tuning against a CNN from scratch", ""] + _final(s)
    staged = s.protocol and s.protocol.compare
    optimistic = " (single best runs: a winner of many trials is optimistic)" if staged else ""
    out += ["One line per kind of start; only runs from torchvision's ImageNet weights count as fine-tuned. "
            "Numbers are "
            f"the best epoch's {metrics.VAL_ACC} on the validation split, the split the configs were selected on"
            f"{optimistic}.", ""]
    ft, scratch = s.best_fine_tuned, s.best_scratch
    lines = (("Best ImageNet fine-tuned run", ft, ""),
             ("Best warm start (from a weights file, not ImageNet fine-tuning)", s.best_warm_start,
              f" Started from {_start_text(s.best_warm_start)}." if s.best_warm_start else ""),
             ("Best run from random initialisation (`weights=none`, not fine-tuned)", s.best_random_init, ""),
             (f"Best {SCRATCH_MODEL} run", scratch, ""))
    for label, record, extra in lines:
        if record:
            size = f" at {record.size_label} px" if record.size_label else ""
            out.append(f"- **{label}: `{record.run_id}`**{size}, best {metrics.VAL_ACC} "
                       f"**{percent(record.best_val_acc)}** (epoch {_epochs(record)}).{extra} Config: "
                       f"{config_text(record.effective_config)}")
    if ft and scratch:
        out.append(
            f"- **Gap: {points(s.gap_points)}** (best ImageNet fine-tuned minus best {SCRATCH_MODEL}, single runs).")
    elif ft:
        out.append(f"- **No successful {SCRATCH_MODEL} run** in this sweep: there is no scratch baseline to compare "
                   "against.")
    elif scratch and s.best_warm_start:
        # the offline demo: a warm start is still a start to compare, labelled as what it is
        out.append(f"- **Gap: {points((s.best_warm_start.best_val_acc - scratch.best_val_acc) * 100)}** (best warm "
                   f"start minus best {SCRATCH_MODEL}, single runs). No ImageNet fine-tuned run in this sweep: the gap "
                   "measures what the warm start's weights file brings, not ImageNet fine-tuning.")
    elif scratch:
        out.append("- **No successful ImageNet fine-tuned run** in this sweep: "
                   f"there is nothing to compare {SCRATCH_MODEL} against.")
    elif s.best_random_init or s.best_warm_start:
        out.append(f"- **No ImageNet fine-tuned run and no {SCRATCH_MODEL} run** in this sweep: its successful runs "
                   "started from random initialisation (`weights=none`) or from weights files, which are neither; run "
                   "them with ImageNet weights to measure fine-tuning.")
    else:
        out.append("- **No successful run** in this sweep.")
    out.append("")
    out += _seeds("fine-tuned", s.seeds_fine_tuned, ft, s.ineligible) + _seeds(SCRATCH_MODEL, s.seeds_scratch, scratch,
                                                                               s.ineligible)
    gap = s.seed_gap
    if gap and gap.excludes_zero:
        out.append(f"- Gap between these seed means: **{points(gap.difference * 100)}** ({difference_ci_text(gap)}).")
    elif gap:
        out.append(f"- Gap between these seed means: {points(gap.difference * 100)} ({difference_ci_text(gap)})"
                   + no_claim(gap, "seeds"))
    out.append("")
    return out


def _seeds(label: str, group: SeedGroup | None, best: RunRecord | None, ineligible: list[SeedGroup] = ()) -> list[str]:
    out = []
    for other in ineligible:
        if (label == SCRATCH_MODEL) != (other.records[0].start == "scratch"):
            continue
        out.append(f"- Over seeds ({label}): {config_text(other.config)} reached {ci_text(other.ci)} over "
                   f"{len(other.seeds)} of {other.planned} seeds, but lost {_lost_text(other.lost)}: **unstable**, not "
                   "eligible as the best config over seeds (its mean is over survivors only; `agent.py report "
                   "--allow_lost_seeds` counts it anyway).")
    if group is None:  # said only under a best run of its own: no numbers above, nothing to qualify
        return out + ([f"- Over seeds ({label}): no {label} config was repeated over seeds with finished runs and none "
                       "lost, so the numbers above are single runs and carry their seed's luck."] if best else [])
    lost = f"; **{len(group.seeds)} of {group.planned} seeds**, lost {_lost_text(group.lost)}" if group.lost else ""
    return out + [f"- Over seeds ({label}): the best config repeated over seeds reaches **{ci_text(group.ci)}** "
                  f"over {len(group.seeds)} seeds ({', '.join(map(_value, group.seeds))}; runs "
                  f"{', '.join(f'`{r.run_id}`' for r in group.records)}"
                  f"{'; runs of one seed averaged first' if len(group.records) > len(group.seeds) else ''}{lost}). "
                  f"Config: {config_text(group.config)}"]


def _lost_text(records: list[RunRecord]) -> str:
    return ", ".join(f"`{r.run_id}` ({r.state}{': ' + str(r.reason)[:80] if r.reason else ''})" for r in records)


def _final(s: Summary) -> list[str]:
    """The headline of the protocol's final stage: each arm's recipe over fresh seeds and split seeds, tested once."""
    p = s.protocol
    if p is None or not p.compare:
        return []
    waiting = [arm for arm in p.compare if arm.untested]
    out = ["### Final comparison (compare stage)", "",
           "Each arm's recipe, chosen on the validation split in the tune stage, trained again on fresh seeds and "
           "split seeds. Nothing here was selected. "
           + ("Every run that finished was evaluated **once** on the held-out test set."
                                                    if not waiting
              else "**Not every arm is tested yet**: an arm on validation is not compared with one on the test set; "
                   "run `python agent.py protocol test`."), ""]
    rows = []
    for arm in p.compare:
        metric = {metrics.TEST_ACC: "test", None: "–"}.get(arm.metric, "validation (not tested yet)")
        value = ci_text(arm.ci) if arm.ci else (percent(arm.values[0]) + " (one run)" if arm.values else
                                                "**no result**")
        missing = [_lost_text([*arm.lost, *arm.unfinished])] if arm.lost or arm.unfinished else []
        missing += [f"never run: {'; '.join(arm.missing)}"] if arm.missing else []
        splits = f"{arm.splits} of {arm.planned_splits}" if arm.splits < arm.planned_splits else arm.splits
        rows.append([_value(arm.arm), value, f"{len(arm.runs)}/{arm.planned}", splits, metric,
                     "; ".join(missing) or "–"])
    out += [table(["arm", "mean accuracy (95% CI)", "runs counted / planned", "split seeds counted", "on",
                   "lost, not finished or never run (in n/k, not in the mean)"], rows), ""]
    if not p.grid_known:
        out.append("- *planned* is the runs this source holds: the stage's grid was not read (a W&B source, or a "
                   "folder without its sweep.yaml), so a cell never started is not counted.")
    if p.absent_recipes:
        out.append(f"- **No run at all of {p.absent_recipes} recipe(s) of the compare grid**: it lists "
                   f"{p.absent_recipes + len(p.compare)}, and {len(p.compare)} arm(s) have runs here; run the compare "
                   "stage's command again.")
    unfinished = [r for arm in p.compare for r in arm.unfinished]
    if unfinished:
        out.append(f"- **{len(unfinished)} final run(s) have not finished** "
                   f"({', '.join(f'`{r.run_id}` ({r.state})' for r in unfinished[:6])}): their arms' means are over "
                   "the others; run the compare stage's command again to finish them.")
    for gap in p.gaps:
        if gap.ci is None:
            out.append(
                f"- **{gap.arm} minus {SCRATCH_MODEL}: {points(gap.difference * 100)}** "
                f"({gap.counts}; two runs a side are needed for an interval).")
        elif gap.ci.excludes_zero:
            out.append(f"- **{gap.arm} minus {SCRATCH_MODEL}: {points(gap.difference * 100)}** "
                       f"({difference_ci_text(gap.ci)}; {gap.counts}).")
        else:
            out.append(f"- {gap.arm} minus {SCRATCH_MODEL}: {points(gap.difference * 100)} "
                       f"({difference_ci_text(gap.ci)}; {gap.counts})" + no_claim(gap.ci, "runs"))
    scratch = [arm for arm in p.compare if arm.start == SCRATCH]
    if not scratch:
        out.append(f"- **No gap**: the compare stage has no {SCRATCH_MODEL} run to measure fine-tuning against.")
    elif not scratch[0].values:
        out.append(f"- **No gap**: {SCRATCH_MODEL} has no finished compare run ({len(scratch[0].lost)} lost, "
                   f"{len(scratch[0].unfinished)} not finished).")
    for arm in p.compare:
        if arm.start == IMAGENET and not arm.values:
            out.append(f"- **No gap for {arm.arm}**: it has no finished compare run ({len(arm.lost)} lost, "
                       f"{len(arm.unfinished)} not finished).")
    short = [arm for arm in p.compare if arm.values and arm.splits < arm.planned_splits]
    for arm in short:
        out.append(f"- **Warning:** {arm.arm}'s counted runs cover {arm.splits} of its {arm.planned_splits} split "
                   "seeds (the others lost or never run): its mean leaves a split out, and a gap to it compares "
                   "different splits.")
    improving = [r for arm in p.compare for r in arm.still_improving]
    if improving:
        out.append(f"- **Still improving at their last epoch: {len(improving)} final run(s)** "
                   f"({', '.join(f'`{r.run_id}`' for r in improving[:6])}{' ...' if len(improving) > 6 else ''}): "
                   "their best epoch was their last, so their numbers are lower bounds; the arm's budget may be "
                   "too short for it.")
    if p.test_images and not waiting and any(arm.values for arm in p.compare):
        accuracy = float(np.mean([v for arm in p.compare for v in arm.values]))
        margin = 1.96 * math.sqrt(accuracy * (1 - accuracy) / p.test_images) * 100
        out.append(f"- The intervals are over seeds and split seeds, tested on one fixed test set of {p.test_images} "
                   f"images: they leave out that set's own sampling error (binomial, about ±{margin:.1f} points at "
                   f"{accuracy:.0%}).")
    untested = [r for arm in p.compare for r in arm.untested]
    if untested:
        out.append(f"- {len(untested)} finished run(s) have no test result yet "
                   f"({', '.join(f'`{r.run_id}`' for r in untested[:6])}{' ...' if len(untested) > 6 else ''}): their "
                   "arm is shown on validation; run `python agent.py protocol test`.")
    several = [arm.arm for arm in p.compare if arm.configs > 1]
    if several:
        out.append(f"- **Warning:** arm(s) {', '.join(several)} ran more than one recipe in the compare stage: the "
                   "stage compares one recipe per arm; the extra ones turn it into another tuning stage.")
    if p.single_split:
        out.append(
            "- **Warning:** every compare run used one split seed: the intervals leave out the variance of the split.")
    if p.reused_seeds:
        out.append(
            f"- **Warning:** final run(s) {', '.join(p.reused_seeds[:6])} "
            "trained with a seed that tuning used: not fresh.")
    return out + ["", "### Tuning (tune stage, validation split: what the recipes were selected on)", ""]


def _leaderboard(s: Summary) -> list[str]:
    def run_cell(r: RunRecord) -> str:
        lost = s.unstable.get(r.config_key(without=("seed",)))
        return f"`{r.run_id}`" + (f" (unstable: {len(lost)} of its seeds lost)" if lost else "")

    rows = [[rank, run_cell(r), _value(r.model_label), _value(r.size_label), _strategy(r),
             _value(r.config.get("k_layers")),
             _value(r.config.get("freeze_fraction")), _value(r.config.get("lr")), _value(r.config.get("augment")),
             percent(r.best_val_acc), _epochs(r), _seconds(r.train_seconds), _rate(r.images_per_second),
             _value(r.trainable_params)]
            for rank, r in enumerate(s.leaderboard, start=1)]
    return [f"## 2. Leaderboard (top {len(s.leaderboard)} of {len(s.successful)} successful runs)", "",
            f"Ranked by the **best epoch's** {metrics.VAL_ACC} (not the last "
            "epoch's). *px*: the training crop (`224→288`: trained at 224, validated "
            "at 288); *img/s*: training throughput, the median epoch after the first.", "",
            table(["#", "run", "model", "px", "strategy", "k_layers", "freeze_fraction", "lr", "augment",
                   f"best {metrics.VAL_ACC}", "best epoch/epochs", "train s", "img/s", "trainable params"], rows)
            if rows else "No successful runs.", ""]


def _groups(s: Summary, image: str | None) -> list[str]:
    rows = [[_value(g.model), _value(g.size), _value(g.strategy), g.stats.count, percent(g.stats.best),
             percent(g.stats.mean),
             "–" if g.stats.std is None else f"{g.stats.std * 100:.2f}", g.early_stopped, _rate(g.images_per_second)]
            for g in s.groups]
    out = ["## 3. By model, resolution and strategy", "",
           "Finished runs only; early-stopped runs are counted apart and are not in best/mean/std. Strategies run "
           f"from least to most trained: {', '.join(strategy_order())}; each resolution (*px*) is a group of its own.",
           "",
           table(["model", "px", "strategy", "finished runs", "best", "mean", "std (points)", "early-stopped", "img/s"],
                 rows)
           if rows else "No successful runs.", ""]
    if image:
        out += [f"![val_acc by strategy]({image})", ""]
    return out


def _cost(s: Summary, image: str | None) -> list[str]:
    out = ["## 4. Cost: Pareto-optimal runs", "",
           "A run is Pareto-optimal when no other run is at least as accurate for at most the cost, and better "
           "on one of the two.", ""]
    fronts = [("training time", s.pareto_seconds, lambda r: r.train_seconds or 0),
              ("trainable parameters", s.pareto_params, lambda r: r.trainable_params or 0)]
    if any(r.peak_gpu_memory is not None for r in s.successful):  # CUDA runs only: a CPU run has no GPU memory to weigh
        fronts.append(("peak GPU memory", s.pareto_memory, lambda r: r.peak_gpu_memory or 0))
    for title, front, key in fronts:
        members = sorted((r for r in s.successful if r.run_id in front), key=lambda r: (key(r), r.run_id))
        rows = [[f"`{r.run_id}`", _value(r.model_label), _value(r.size_label), _strategy(r), percent(r.best_val_acc),
                 _seconds(r.train_seconds), _rate(r.images_per_second), _value(r.trainable_params),
                 _memory(r.peak_gpu_memory)]
                for r in members]
        out += [f"**Against {title}**", "",
                table(["run", "model", "px", "strategy", f"best {metrics.VAL_ACC}", "train s", "img/s",
                       "trainable params", "peak GPU GiB"], rows)
                if rows else f"No successful run recorded its {title}.", ""]
    p = s.provenance
    if len(p.devices) > 1 or len(p.precisions) > 1:
        out += [f"*Train s* compare only within one device and precision, and these runs span several (devices: "
                f"{_listing(p.devices)}; precisions: {_listing(p.precisions)}): the front against training time mixes "
                "hardware with config.", ""]
    cache = [r.summary.get(metrics.CACHE_SECONDS) for r in s.successful]
    cache = [c for c in cache if isinstance(c, (int, float))]
    if cache:
        out += ["*Train s* counts the training steps. Building the caches it reads (decoded images; with "
                f"`augment=none`, the frozen stages' features) took {sum(cache):.0f} s over these runs, most of it in "
                "the first run of each model and depth: the runs after it train on what it built.", ""]
    if image:
        out += [f"![accuracy against cost]({image})", ""]
    return out


def _importance(s: Summary, image: str | None) -> list[str]:
    out = ["## 5. Hyperparameter importance", ""]
    if s.importance is None:
        return out + [f"Not computed: it needs at least {MIN_RUNS_FOR_IMPORTANCE} successful runs with a "
                      "parameter that varies.", ""]
    rows = [[f"`{row.parameter}`", f"{row.importance:.3f}",
             "–" if row.correlation is None else f"{row.correlation:+.2f}", row.kind,
             ", ".join(f"`{name}`" for name in row.stands_for) or "–"] for row in s.importance]
    out += [f"Over the {len(s.successful)} successful runs: random-forest importance for the best "
            f"{metrics.VAL_ACC} (one-hot categoricals summed), and the Spearman rank correlation for numeric "
            "parameters. A parameter that only follows another (`weights` follows `model`) is folded into it. "
            "With few runs, read it as a hint, not a finding.", "",
            table(["parameter", "importance", "rank correlation", "kind", "also stands for"], rows), ""]
    if image:
        out += [f"![hyperparameter importance]({image})", ""]
    return out


def _not_counted(s: Summary) -> list[str]:
    out = ["## 6. Runs that did not count", ""]
    counts = [[state, len(records)] for state, records in s.not_counted]
    counts.append(["duplicate (skipped, never run)", len(s.duplicates)])
    out += ["None of these enter any mean, spread or interval. Early-stopped runs appear on the leaderboard "
            "with their best epoch but not in the means.", "", table(["state", "runs"], counts), ""]
    rows = [[f"`{r.run_id}`", state, _value(r.model_label), _strategy(r), _value(r.epochs_completed), failure_reason(r)]
            for state, records in s.not_counted if state != metrics.EARLY_STOPPED for r in records
            if not r.refused_before_training]
    if rows:
        out += ["**Failed, diverged, out of memory, preempted, running or without a result**", "",
                table(["run", "state", "model", "strategy", "epochs", "reason"], rows), ""]
    refused: dict[str, list[str]] = {}  # one row per mistake: attempts with the same typo are one thing to fix
    for r in (r for _, records in s.not_counted for r in records if r.refused_before_training):
        refused.setdefault(failure_reason(r), []).append(f"`{r.run_id}`")
    if refused:
        out += [f"**Refused before training** ({sum(map(len, refused.values()))} run(s), counted as failed above): a "
                "data folder, weights file or setting to fix; they trained nothing. A sweep retries its own when its "
                "command is run again; single runs can be deleted once fixed.", "",
                table(["reason", "runs"], [[reason, ", ".join(ids)] for reason, ids in refused.items()]), ""]
    stopped = dict(s.not_counted).get(metrics.EARLY_STOPPED, [])
    if stopped:
        rows = [[f"`{r.run_id}`", _value(r.model_label), _strategy(r), percent(r.best_val_acc), _epochs(r),
                 failure_reason(r)] for r in stopped]
        out += ["**Early-stopped** (cut short by the sweep; not in means)", "",
                table(["run", "model", "strategy", f"best {metrics.VAL_ACC}", "best epoch/epochs", "reason"], rows),
                ""]
    if s.duplicates:
        rows = [[f"`{d.run_id}`", f"`{d.duplicate_of}`" if d.duplicate_of else "–"] for d in s.duplicates]
        count = len(s.duplicates)
        out += [f"**Skipped duplicates**: {count} trial{'s' if count != 1 else ''} repeated an effective config "
                "already run; not run, not counted.", "", table(["trial", "duplicate of"], rows), ""]
    return out


def _test(s: Summary, test_images: dict[str, list[tuple[str, str]]]) -> list[str]:
    out = ["## 7. Held-out test set", ""]
    if not s.tested:
        return out + ["No run has been evaluated on the test set (`agent.py test RUN` does that, once, for a "
                      "chosen run).", ""]
    out += ["The held-out test set, evaluated **once** per chosen run after all selection was done on "
            "validation; nothing above was chosen with it.", ""]
    for record in s.tested:
        test = record.test or {}
        out += [f"### `{record.run_id}` ({_value(record.model_label)}, {_strategy(record)})", "",
                f"- test_acc **{percent(record.test_acc)}** on {_value(test.get(NUM_IMAGES))} images "
                f"(best {metrics.VAL_ACC} {percent(record.best_val_acc)}); checkpoint `{_value(test.get(CHECKPOINT))}`",
                ""]
        per_class = test.get(PER_CLASS_ACC) or {}
        if per_class:
            rows = [[name, percent(accuracy)] for name, accuracy in sorted(per_class.items())]
            out += [table(["class", "test accuracy"], rows), ""]
        for caption, link in test_images.get(record.run_id, []):
            out += [f"![{caption}]({link})", ""]
    return out


def _provenance(s: Summary) -> list[str]:
    p = s.provenance
    states = ", ".join(f"{state} {count}" for state, count in sorted(p.states.items()))
    weights = "; ".join(f"{model}: {', '.join(f'{v} x{c}' for v, c in sorted(versions.items()))}"
                        for model, versions in sorted(p.weights_versions.items()))
    hashes = ", ".join(f"`{h}` x{c}" for h, c in sorted(p.split_hashes.items())) or "–"
    versions = _listing(p.code_versions)
    out = ["## 8. Provenance", "",
           f"- Source: `{p.source}` (sweep `{p.sweep_name}`, metric `{p.metric_name}` {p.metric_goal or ''})",
           f"- Runs: {p.run_count} ({states}); skipped duplicates: {len(s.duplicates)}",
           f"- Split hashes of successful runs: {hashes}",
           f"- Weights versions by model: {weights or '–'}",
           f"- Code versions of successful runs: {versions}",
           f"- Devices of successful runs: {_listing(p.devices)}; precisions: {_listing(p.precisions)}",
           f"- Generated: {p.generated_utc}. Every run's effective config, split hash, weights version, code "
           "version, device and precision is in `runs.csv`.", ""]
    out += _warnings(s) or ["No comparability warnings.", ""]
    return out


def _listing(counts) -> str:
    return ", ".join(f"`{value}` x{count}" for value, count in sorted(counts.items())) or "–"


def _warnings(s: Summary) -> list[str]:
    return [line for warning in s.provenance.warnings for line in (f"> **WARNING:** {warning}", "")]


def _protocol(s: Summary) -> list[str]:
    p = s.protocol
    out = ["## 9. Budgets and tuning", ""]
    if p is not None and p.tuning_trials:
        rows = [[arm, count, p.budgets.get(arm, "–"),
                 "**fewer trials than another arm**" if arm in p.short_arms else "–"]
                for arm, count in p.tuning_trials.items()]
        out += ["Tuning trials per arm (tune stage) and the training rule each arm's runs followed. Every arm should "
                "get the same number of trials: an arm tuned more often wins by search, not by its start.", "",
                table(["arm", "tuning trials", "training rule", "note"], rows), ""]
    if s.still_improving:
        ids = ", ".join(f"`{r.run_id}` ({_value(r.model_label)}, epoch {r.best_epoch})" for r in s.still_improving[:12])
        out += [f"**Still improving at their last epoch** ({len(s.still_improving)} finished run(s)): "
                f"{ids}{' ...' if len(s.still_improving) > 12 else ''}. Their best epoch was their last: a longer "
                "budget might have trained them further, so their numbers are a lower bound.", ""]
    else:
        out += ["No finished run had its best epoch at its last: every run stopped improving within its budget.", ""]
    return out


def _curve(s: Summary, image: str | None) -> list[str]:
    p = s.protocol
    if p is None or not p.curve:
        return []
    tested = p.curve_metric == metrics.TEST_ACC
    metric = "test accuracy" if tested else "best val_acc (the curve's runs are not all tested)"
    rows = [[_value(point.arm), f"{point.subset_fraction:g}", f"{point.images_per_class:g}",
             ci_text(point.ci) if point.ci else (percent(point.values[0]) if point.values else "–"), len(point.values),
             point.lost]
            for point in p.curve]
    out = ["## 10. Data-efficiency curve", "",
           f"Each arm's recipe trained on nested subsets of the training images (curve stage), {metric} over seeds, "
           "against images per class.", "",
           table(["arm", "subset_fraction", "images per class", "mean (95% CI)", "runs", "lost"], rows), ""]
    out += [f"- **{c.statement()}**." for c in p.crossovers]
    if p.curve_still_improving:
        runs = p.curve_still_improving
        out.append(f"- **Still improving at their last epoch: {len(runs)} curve run(s)** "
                   f"({', '.join(f'`{r.run_id}`' for r in runs[:6])}{' ...' if len(runs) > 6 else ''}): a smaller "
                   "subset trains fewer steps in the same epochs, so its point may be a lower bound.")
    out.append("")
    if image:
        out += [f"![data-efficiency curve]({image})", ""]
    return out


def _opening(s: Summary) -> str:
    """The report's first line: how many runs, and on which split and stage its numbers are."""
    runs = s.table.records
    text = f"{len(runs)} run{'s' * (len(runs) != 1)}"
    stages = Counter(r.stage for r in runs if r.stage)
    if not stages or set(stages) == {"tune"}:
        return (f"{text}, {len(s.successful)} successful; accuracies are the best epoch's {metrics.VAL_ACC} on the "
                "validation split.")
    by_stage = ", ".join(f"{stage} {stages[stage]}" for stage in ("tune", "compare", "curve") if stages[stage])
    final = sum(r.is_successful for r in runs if r.in_final_stage)
    return (f"{text} ({by_stage}), {len(s.successful) + final} successful ({len(s.successful)} outside the final "
            f"stages); the final comparison and the curve are on the test set once tested, as their tables say; every "
            f"other accuracy is the best epoch's {metrics.VAL_ACC} on the validation split.")


def render(summary: Summary, images: dict[str, str], test_images: dict[str, list[tuple[str, str]]]) -> str:
    """`images` maps a figure's role (by_strategy, cost, curves, importance) to its relative path."""
    lines = [f"# Sweep report: {summary.provenance.sweep_name}", "", _opening(summary), ""]
    lines += _warnings(summary)
    lines += _headline(summary)
    if images.get("curves"):
        lines += [f"![learning curves]({images['curves']})", ""]
    lines += _leaderboard(summary)
    lines += _groups(summary, images.get("by_strategy"))
    lines += _cost(summary, images.get("cost"))
    lines += _importance(summary, images.get("importance"))
    lines += _not_counted(summary)
    lines += _test(summary, test_images)
    lines += _provenance(summary)
    lines += _protocol(summary)
    lines += _curve(summary, images.get("data_efficiency"))
    return "\n".join(lines).rstrip() + "\n"
