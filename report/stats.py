"""Every number in a report, computed once from the `RunTable`; plots and markdown only format them.

Rules that keep the numbers honest: a run's score is its best epoch's val_acc; the leaderboard, the
headline and the Pareto fronts rank successful runs (finished or early-stopped by the sweep); means,
spreads and confidence intervals use finished runs only; nothing crashed, diverged or running enters any.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from models.freezing import strategy_names
from report.table import (
    CODE_VERSION,
    PRECISION,
    RANDOM_INIT,
    SCRATCH,
    SCRATCH_MODEL,
    SEED,
    WARM_START,
    RunRecord,
    RunTable,
    SkippedDuplicate,
)
from trainer import metrics

if TYPE_CHECKING:
    from report.protocol import ProtocolSummary

# Below this many runs a random forest's importances are noise dressed as a ranking.
MIN_RUNS_FOR_IMPORTANCE = 4
CONFIDENCE = 0.95
# Kept first when one parameter merely follows another (see `_varying_parameters`).
_PARAMETER_PRIORITY = ("model", "strategy")
# Order of the "did not count" section: outright failures first, then the runs that were merely cut short.
NOT_COUNTED_ORDER = (metrics.FAILED, metrics.DIVERGED, metrics.OOM, metrics.PREEMPTED, metrics.RUNNING,
                     metrics.FINISHED, metrics.EARLY_STOPPED)


# --- primitives -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupStats:
    count: int
    best: float | None
    mean: float | None
    std: float | None  # sample standard deviation (ddof=1); None below two runs


def group_stats(values: list[float]) -> GroupStats:
    if not values:
        return GroupStats(0, None, None, None)
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) >= 2 else None
    return GroupStats(len(array), float(array.max()), float(array.mean()), std)


@dataclass(frozen=True)
class MeanCI:
    mean: float
    half_width: float
    n: int
    confidence: float = CONFIDENCE

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def no_spread(self) -> bool:
        """Every value equal: a zero-width interval, which says nothing of how sure the mean is."""
        return self.half_width == 0

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def mean_ci(values: list[float], confidence: float = CONFIDENCE) -> MeanCI | None:
    """Student-t interval of the mean: few seeds, unknown variance. None below two values."""
    if len(values) < 2:
        return None
    from scipy import stats  # here, past the early return: scipy.stats takes half a second to import

    array = np.asarray(values, dtype=float)
    if np.ptp(array) == 0:  # every value equal (std may still round to 1e-16): no spread, no interval
        return MeanCI(float(array[0]), 0.0, len(array), confidence)
    sem = array.std(ddof=1) / math.sqrt(len(array))
    t = stats.t.ppf(0.5 + confidence / 2, df=len(array) - 1)
    return MeanCI(float(array.mean()), float(t * sem), len(array), confidence)


@dataclass(frozen=True)
class DifferenceCI:
    difference: float  # first mean minus second
    half_width: float
    df: float  # Welch-Satterthwaite degrees of freedom
    confidence: float = CONFIDENCE

    @property
    def low(self) -> float:
        return self.difference - self.half_width

    @property
    def high(self) -> float:
        return self.difference + self.half_width

    @property
    def no_spread(self) -> bool:
        """Every run equal on both sides: no spread to scale a t by, so no interval and no claim."""
        return self.half_width == 0

    @property
    def excludes_zero(self) -> bool:
        return not self.no_spread and (self.low > 0 or self.high < 0)


def difference_ci(first: list[float], second: list[float], confidence: float = CONFIDENCE) -> DifferenceCI | None:
    """Welch t interval of mean(first) - mean(second): few seeds a side, variances not assumed equal.
    None below two values a side."""
    if len(first) < 2 or len(second) < 2:
        return None
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    var_a, var_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)  # squared standard errors of the two means
    difference = float(a.mean() - b.mean())
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # every seed agreed on both sides: no spread to scale a t by
        return DifferenceCI(difference, 0.0, float(len(a) + len(b) - 2), confidence)
    df = (var_a + var_b) ** 2 / (var_a ** 2 / (len(a) - 1) + var_b ** 2 / (len(b) - 1))
    from scipy import stats  # here, past the early returns: scipy.stats takes half a second to import

    t = stats.t.ppf(0.5 + confidence / 2, df=df)
    return DifferenceCI(difference, float(t * math.sqrt(var_a + var_b)), float(df), confidence)


def pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Ids of the (accuracy, cost) points no other point beats on both: higher-or-equal accuracy at
    lower-or-equal cost, strictly better on one."""
    front = set()
    for run_id, (accuracy, cost) in points.items():
        dominated = any(
            other_acc >= accuracy and other_cost <= cost and (other_acc > accuracy or other_cost < cost)
            for other_id, (other_acc, other_cost) in points.items() if other_id != run_id
        )
        if not dominated:
            front.add(run_id)
    return front


@dataclass(frozen=True)
class Importance:
    parameter: str
    importance: float  # random-forest importance; a categorical's is the sum over its one-hot columns
    correlation: float | None  # Spearman rank correlation with val_acc, numeric parameters only
    kind: str  # "numeric" or "categorical"
    stands_for: tuple[str, ...] = ()  # parameters that only follow this one, folded into it


def _varying_parameters(configs: list[dict]) -> dict[str, list[str]]:
    """Parameters that vary, each with the ones it determines folded in.

    Per-model keys (`weights`, scratch_cnn's `activation`, ...) change exactly when `model` changes; left as
    features they split one effect among a dozen aliases at random. A parameter whose value is a function of
    one already kept is folded into it; `model` and `strategy` are kept first, being the question asked.
    """
    labels = {k: [json.dumps(c.get(k), sort_keys=True, default=str) for c in configs]
              for k in {k for c in configs for k in c}}
    order = [k for k in _PARAMETER_PRIORITY if k in labels] + sorted(set(labels) - set(_PARAMETER_PRIORITY))
    kept: dict[str, list[str]] = {}
    for key in order:
        if len(set(labels[key])) < 2:
            continue  # fixed across these runs: nothing to attribute
        owner = next((k for k in kept if _determines(labels[k], labels[key])), None)
        if owner is None:
            kept[key] = []
        else:
            kept[owner].append(key)
    return kept


def _determines(source: list[str], target: list[str]) -> bool:
    mapping: dict[str, str] = {}
    return all(mapping.setdefault(a, b) == b for a, b in zip(source, target))


def parameter_importance(records: list[RunRecord]) -> list[Importance] | None:
    """W&B-style parameter importance of the effective config for the best val_acc.

    Rank correlation, not Pearson: learning rates span decades, and a linear correlation on raw lr is
    decided by its largest values.
    """
    if len(records) < MIN_RUNS_FOR_IMPORTANCE:
        return None
    # Here, past the early return: scipy.stats and scikit-learn take most of a second to import.
    from scipy import stats
    from sklearn.ensemble import RandomForestRegressor

    target = np.array([r.best_val_acc for r in records], dtype=float)
    configs = [r.effective_config for r in records]
    parameters = _varying_parameters(configs)
    columns, owners, kinds, correlations = [], [], {}, {}
    for key in parameters:
        values = [c.get(key) for c in configs]
        present = [v for v in values if v is not None]
        if all(isinstance(v, (int, float)) for v in present):
            numbers = [float(v) if v is not None else math.nan for v in values]
            finite = [x for x in numbers if not math.isnan(x)]
            # "Does not apply" (null) must stay apart from every real value: put it below the range.
            sentinel = min(finite) - (max(finite) - min(finite) or 1.0)
            columns.append([sentinel if math.isnan(x) else x for x in numbers])
            owners.append(key)
            kinds[key] = "numeric"
            pairs = [(x, y) for x, y in zip(numbers, target) if not math.isnan(x)]
            correlations[key] = None
            if len(pairs) >= 3 and len({p[0] for p in pairs}) > 1 and len({p[1] for p in pairs}) > 1:
                correlations[key] = float(stats.spearmanr([p[0] for p in pairs], [p[1] for p in pairs])[0])
        else:
            labels = [json.dumps(v, sort_keys=True, default=str) for v in values]
            for label in sorted(set(labels)):
                columns.append([1.0 if x == label else 0.0 for x in labels])
                owners.append(key)
            kinds[key] = "categorical"
            correlations[key] = None
    if not columns:
        return None
    features = np.array(columns, dtype=float).T
    if np.ptp(target) == 0:
        column_importance = np.zeros(features.shape[1])
    else:
        forest = RandomForestRegressor(n_estimators=100, random_state=0)
        column_importance = forest.fit(features, target).feature_importances_
    totals: dict[str, float] = defaultdict(float)
    for owner, value in zip(owners, column_importance):
        totals[owner] += float(value)
    rows = [Importance(k, totals[k], correlations[k], kinds[k], tuple(parameters[k])) for k in kinds]
    return sorted(rows, key=lambda row: (-row.importance, row.parameter))


# --- the report's numbers ---------------------------------------------------------------------------

@dataclass
class SeedGroup:
    """One effective config repeated over seeds (finished runs only)."""

    config: dict  # effective config without the seed
    records: list[RunRecord]
    ci: MeanCI
    seed_means: list[float]  # one value per seed, what the interval is computed from
    # seeds of this config that failed, diverged or ran out of memory
    lost: list[RunRecord] = field(default_factory=list)

    @property
    def planned(self) -> int:
        """Seeds tried: those that finished and those lost."""
        return len({json.dumps(r.config.get(SEED), default=str) for r in [*self.records, *self.lost]})

    @property
    def seeds(self) -> list:
        return sorted({r.config.get(SEED) for r in self.records}, key=str)


@dataclass
class StrategyGroup:
    model: str | None
    strategy: str | None
    stats: GroupStats  # finished runs
    early_stopped: int  # successful but cut short: shown, not in the numbers
    size: str | None = None  # training size in px (`224→288` when evaluated at another): a resolution is another recipe
    images_per_second: float | None = None  # median training throughput of its runs


@dataclass
class Provenance:
    source: str
    sweep_name: str
    metric_name: str | None
    metric_goal: str | None
    run_count: int
    states: Counter
    split_hashes: Counter
    weights_versions: dict[str, Counter]
    warnings: list[str]
    generated_utc: str
    code_versions: Counter = field(default_factory=Counter)  # successful runs that recorded one
    devices: Counter = field(default_factory=Counter)  # successful runs that recorded one
    precisions: Counter = field(default_factory=Counter)  # successful runs that recorded one


@dataclass
class Summary:
    table: RunTable
    leaderboard: list[RunRecord]
    best_fine_tuned: RunRecord | None
    best_scratch: RunRecord | None
    best_random_init: RunRecord | None  # a pretrained architecture trained from random init (weights=none)
    best_warm_start: RunRecord | None  # started from a weights file that is not torchvision's ImageNet file
    gap_points: float | None
    seeds_fine_tuned: SeedGroup | None
    seeds_scratch: SeedGroup | None
    seed_gap: DifferenceCI | None  # fine-tuned minus scratch seed means, Welch t
    groups: list[StrategyGroup]
    pareto_seconds: set[str]
    pareto_params: set[str]
    pareto_memory: set[str]  # against peak GPU memory (CUDA runs that recorded it)
    importance: list[Importance] | None
    not_counted: list[tuple[str, list[RunRecord]]]
    still_improving: list[RunRecord]  # finished with their best epoch their last: the budget may have been too short
    unstable: dict[str, list[RunRecord]]  # config key (seed aside) -> its lost seeds, for configs that lost some
    ineligible: list[SeedGroup]  # configs over seeds left out of "best config over seeds" for their lost seeds
    duplicates: list[SkippedDuplicate]
    tested: list[RunRecord]
    best_per_strategy: list[RunRecord]  # for the learning curves
    provenance: Provenance
    successful: list[RunRecord] = field(default_factory=list)
    protocol: ProtocolSummary | None = None


def rank_key(record: RunRecord):
    """Best val_acc first; ties go to the cheaper run, then the run id, so the order is stable."""
    seconds = record.train_seconds
    return (-record.best_val_acc, seconds if seconds is not None else math.inf, record.run_id)


def strategy_order() -> tuple[str, ...]:
    """From least to most of the backbone trained, so tables and plots read as a dose-response: the registry's order."""
    return strategy_names()


def strategy_sort_key(model: str | None, strategy: str | None):
    """Pretrained models by name, scratch_cnn last; within a model, strategies from least to most trained."""
    order = strategy_order()
    position = order.index(strategy) if strategy in order else len(order)
    return (model == SCRATCH_MODEL, str(model), position, str(strategy))


def summarise(table: RunTable, top_n: int = 10, allow_lost_seeds: bool = False) -> Summary:
    """`allow_lost_seeds`: a config that lost a seed may still be the best config over seeds (off: a config whose
    seeds fail is not a recipe to recommend, whatever its survivors reached)."""
    from report.protocol import summarise_protocol

    # Every section but the protocol's own is about selection: the runs that chose configs on the validation split.
    # The final stages' runs (fresh seeds of fixed recipes, subsets of the data) have their own sections and numbers.
    successful = sorted((r for r in table.successful() if not r.in_final_stage), key=rank_key)
    complete = [r for r in table.complete() if not r.in_final_stage]
    unstable: dict[str, list[RunRecord]] = defaultdict(list)
    for record in table.records:
        if record.is_lost and not record.in_final_stage:
            unstable[record.config_key_as_asked(without=(SEED,))].append(record)
    fine_tuned = [r for r in successful if r.is_fine_tuned]  # ImageNet weights: not random init, not a warm start
    scratch = [r for r in successful if r.start == SCRATCH]
    best_ft = fine_tuned[0] if fine_tuned else None
    best_scratch = scratch[0] if scratch else None
    gap = (best_ft.best_val_acc - best_scratch.best_val_acc) * 100 if best_ft and best_scratch else None

    groups = []
    by_group: dict[tuple, list[RunRecord]] = defaultdict(list)
    for record in successful:
        by_group[(record.model_label, record.strategy, record.size_label)].append(record)
    for (model, strategy, size), members in sorted(by_group.items(),
                                                   key=lambda item: (*strategy_sort_key(*item[0][:2]),
                                                                     _size_order(item[0][2]))):
        values = [r.best_val_acc for r in members if r.is_complete]
        speeds = sorted(r.images_per_second for r in members if r.images_per_second is not None)
        groups.append(StrategyGroup(model, strategy, group_stats(values),
                                    sum(r.state == metrics.EARLY_STOPPED for r in members), size,
                                    speeds[len(speeds) // 2] if speeds else None))

    best_per_strategy: dict[tuple, RunRecord] = {}
    for record in successful:  # already ranked: the first seen per strategy is its best
        label = (record.start, None if record.is_scratch else record.strategy)
        best_per_strategy.setdefault(label, record)

    ineligible: list[SeedGroup] = []
    seeds_fine_tuned = _best_seed_group([r for r in complete if r.is_fine_tuned], unstable, allow_lost_seeds,
                                        ineligible)
    seeds_scratch = _best_seed_group([r for r in complete if r.start == SCRATCH], unstable, allow_lost_seeds,
                                     ineligible)
    both = seeds_fine_tuned and seeds_scratch
    seed_gap = difference_ci(seeds_fine_tuned.seed_means, seeds_scratch.seed_means) if both else None
    not_counted_groups = table.not_counted()
    ordered_states = [s for s in NOT_COUNTED_ORDER if s in not_counted_groups]
    ordered_states += sorted(set(not_counted_groups) - set(ordered_states))

    return Summary(
        table=table,
        leaderboard=successful[:top_n],
        best_fine_tuned=best_ft,
        best_scratch=best_scratch,
        best_random_init=next((r for r in successful if r.start == RANDOM_INIT), None),
        best_warm_start=next((r for r in successful if r.start == WARM_START), None),
        gap_points=gap,
        seeds_fine_tuned=seeds_fine_tuned,
        seeds_scratch=seeds_scratch,
        seed_gap=seed_gap,
        groups=groups,
        pareto_seconds=pareto_front(_points(successful, lambda r: r.train_seconds)),
        pareto_params=pareto_front(_points(successful, lambda r: r.trainable_params)),
        pareto_memory=pareto_front(_points(successful, lambda r: r.peak_gpu_memory)),
        importance=parameter_importance(successful),
        not_counted=[(s, sorted(not_counted_groups[s], key=lambda r: r.run_id)) for s in ordered_states],
        still_improving=sorted((r for r in complete if r.still_improving), key=lambda r: r.run_id),
        unstable=dict(unstable), ineligible=ineligible,
        duplicates=list(table.duplicates),
        tested=sorted((r for r in table.records if r.test), key=lambda r: r.run_id),
        best_per_strategy=sorted(best_per_strategy.values(),
                                 key=lambda r: strategy_sort_key(SCRATCH_MODEL if r.is_scratch else None, r.strategy)),
        provenance=_provenance(table, sorted(table.successful(), key=rank_key)),
        successful=successful,
        protocol=summarise_protocol(table, allow_lost_seeds),
    )


def _size_order(label: str | None):
    """Groups of one model and strategy by resolution, smallest first (`224` < `224→288` < `288`)."""
    if not label:
        return (0, 0)
    train, _, evaluated = label.partition("→")
    return (int(train), int(evaluated or train))


def _points(records: list[RunRecord], cost) -> dict[str, tuple[float, float]]:
    return {r.run_id: (r.best_val_acc, float(cost(r))) for r in records if cost(r) is not None}


def _best_seed_group(records: list[RunRecord], unstable: dict[str, list[RunRecord]] | None = None,
                     allow_lost: bool = False, ineligible: list[SeedGroup] | None = None) -> SeedGroup | None:
    """The config repeated over seeds with the highest mean: the one claim a reader can lean on. A config that lost a
    seed (failed, diverged, out of memory) is not eligible unless `allow_lost`: its mean is over survivors only."""
    unstable = unstable or {}
    by_config: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_config[record.config_key(without=(SEED,))].append(record)
    groups = list(by_config.values())
    # Seeds of one config on one split of the same files: other data is another claim. A hash some runs did not
    # record (older code) is unknown, not different: it splits nothing.
    for key in (metrics.SPLIT_HASH, metrics.DATA_HASH):
        refined = []
        for members in groups:
            if all(r.summary.get(key) for r in members):
                by_value: dict[str, list[RunRecord]] = defaultdict(list)
                for record in members:
                    by_value[str(record.summary[key])].append(record)
                refined.extend(by_value.values())
            else:
                refined.append(members)
        groups = refined
    candidates = []
    for members in groups:
        # Runs repeating one seed are one sample, not several: averaged per seed, the interval counts seeds.
        by_seed: dict[str, list[float]] = defaultdict(list)
        for record in members:
            by_seed[json.dumps(record.config.get(SEED), default=str)].append(record.best_val_acc)
        seed_means = [float(np.mean(values)) for values in by_seed.values()]
        ci = mean_ci(seed_means)
        if ci is not None:
            config = {k: v for k, v in members[0].effective_config.items() if k != SEED}
            lost = sorted(unstable.get(members[0].config_key(without=(SEED,)), []), key=lambda r: r.run_id)
            group = SeedGroup(config, sorted(members, key=lambda r: r.run_id), ci, seed_means, lost)
            if lost and not allow_lost:
                if ineligible is not None:
                    ineligible.append(group)
                continue
            candidates.append(group)
    return max(candidates, key=lambda g: (g.ci.mean, -g.ci.half_width), default=None)


def _provenance(table: RunTable, successful: list[RunRecord]) -> Provenance:
    warnings = []
    split_hashes = Counter(str(r.summary.get(metrics.SPLIT_HASH)) for r in successful)
    # Runs that ought to share one split: those of one stage. The protocol's final stages vary the split seed (and the
    # curve the subset) on purpose, so there each split seed and subset is a group of its own.
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for record in successful:
        stage = record.config.get("stage") or ""
        final = stage in ("compare", "curve")
        split, subset = (None, None)
        if final:
            split, subset = record.config.get("split_seed"), record.config.get("subset_fraction")
        groups[(stage, split, subset)].append(record)
    for (stage, split_seed, subset), members in sorted(groups.items(), key=lambda item: str(item[0])):
        where = f"{stage} stage " if stage else ""
        if split_seed is not None:
            part = f", subset_fraction={subset}" if subset not in (None, 1.0) else ""
            where += f"with split_seed={split_seed}{part} "
        hashes = Counter(str(r.summary.get(metrics.SPLIT_HASH)) for r in members)
        known_splits = set(hashes) - {"None"}
        if len(known_splits) > 1:
            warnings.append(f"{where}runs used {len(known_splits)} different data splits ({_counts(hashes)}): "
                            "their accuracies are measured on different validation sets and are NOT comparable")
        data_hashes = Counter(str(r.summary[metrics.DATA_HASH]) for r in members if r.summary.get(metrics.DATA_HASH))
        if len(data_hashes) > 1 and len(known_splits) <= 1:
            warnings.append(f"{where}runs were trained on {len(data_hashes)} different sets of files under the same "
                            f"names ({_counts(data_hashes)}): the images were replaced (resized, re-exported) between "
                            "runs, so their accuracies are NOT comparable")
    if "None" in split_hashes:
        warnings.append(f"{split_hashes['None']} successful runs recorded no {metrics.SPLIT_HASH}: "
                        "nothing shows which data split they were measured on")
    # Runs that recorded no code version (older trainers) say nothing either way: left out of the count.
    code_versions = Counter(str(r.summary[CODE_VERSION]) for r in successful if r.summary.get(CODE_VERSION))
    if len(code_versions) > 1:
        warnings.append(f"runs came from {len(code_versions)} different code versions ({_counts(code_versions)}): "
                        "numbers may not compare")
    # Seconds measure the hardware and the arithmetic as much as the config: a T4 in fp16 beside an A100 in bf16
    # is not a cost comparison. Runs that recorded neither (older trainers) say nothing either way.
    devices = Counter(str(r.summary[metrics.DEVICE]) for r in successful if r.summary.get(metrics.DEVICE))
    if len(devices) > 1:
        warnings.append(f"runs trained on {len(devices)} different devices ({_counts(devices)}): their train seconds "
                        "compare only within one device")
    precisions = Counter(str(r.summary[PRECISION]) for r in successful if r.summary.get(PRECISION))
    if len(precisions) > 1:
        warnings.append(f"runs trained at {len(precisions)} different precisions ({_counts(precisions)}): their train "
                        "seconds compare only within one precision, and their accuracies may differ slightly with it")
    weights: dict[str, Counter] = defaultdict(Counter)
    imagenet: dict[str, Counter] = defaultdict(Counter)
    for record in successful:
        weights[str(record.model)][str(record.summary.get(metrics.WEIGHTS_VERSION))] += 1
        if record.is_fine_tuned:
            imagenet[str(record.model)][str(record.summary.get(metrics.WEIGHTS_VERSION))] += 1
    for model, versions in sorted(imagenet.items()):
        if len(versions) > 1:
            warnings.append(f"model {model} ran with {len(versions)} different weights versions "
                            f"({_counts(versions)}): different experiments, shown and grouped apart by version")
    smaller = [f"{r.run_id} ({r.config.get(metrics.BATCH_SIZE)}, not {r.batch_size_asked})" for r in successful
               if r.batch_size_asked]
    if smaller:
        warnings.append(f"{len(smaller)} run(s) trained at a smaller batch_size than their config "
                        f"asked, after CUDA ran out of memory (--oom_retry): {', '.join(smaller)}; "
                        "they are shown and grouped at the batch size they trained with")
    warm = Counter(f"{r.model} from {_start_file(r)}"
                   f"{f' (sha256 {r.weights_sha256[:12]})' if r.weights_sha256 else ''}" for r in successful
                   if r.start == WARM_START)
    if warm:
        warnings.append(f"{sum(warm.values())} run(s) started from weights files that are not "
                        f"torchvision's ImageNet files ({_counts(warm)}): warm starts, reported "
                        "on a line of their own and never counted as ImageNet fine-tuning")
    at_chance = [r for r in successful if r.at_chance]
    if at_chance:
        ids = ", ".join(f"`{r.run_id}`" for r in at_chance[:8]) + (" ..." if len(at_chance) > 8 else "")
        warnings.append(f"{len(at_chance)} successful run(s) never beat chance on validation (best {metrics.VAL_ACC} "
                        f"at or below 1/classes: {ids}): they learned nothing validation can see (lr too high, or a "
                        "frozen backbone whose features do not fit the task), so their numbers say little of their "
                        "recipe")
    random_init = Counter(str(r.model) for r in successful if r.is_random_init)
    if random_init:
        warnings.append(f"{sum(random_init.values())} run(s) of pretrained architectures used weights=none "
                        f"({_counts(random_init)}): trained from random initialisation, they are not fine-tuned runs "
                        "and are left out of the headline")
    for record in successful:
        from_history = record.history_best_val_acc
        if from_history is not None and abs(from_history - record.best_val_acc) > 1e-6:
            warnings.append(f"run {record.run_id}: summary {metrics.BEST_VAL_ACC}={record.best_val_acc:.4f} "
                            f"but the best logged epoch has {metrics.VAL_ACC}={from_history:.4f}")
    if table.metric_name not in (None, metrics.VAL_ACC):
        warnings.append(f"the sweep optimised {table.metric_name!r}, but this report ranks runs by their best "
                        f"{metrics.VAL_ACC!r}")
    if table.metric_goal not in (None, "maximize"):
        warnings.append(f"the sweep's metric goal is {table.metric_goal!r}; {metrics.VAL_ACC} should be maximized")
    # Testing every seed (and split) of one fixed config is not selection, nor is testing each arm's one recipe in the
    # protocol's final stages; testing several configs of one kind is: choosing among them by test accuracy turns the
    # test set into a validation set.
    tested = [r for r in table.records if r.test]
    configs: dict[str, set[str]] = defaultdict(set)
    for record in tested:
        final = record.config.get("stage") in ("compare", "curve")
        configs[str(record.model_label) if final else ""].add(
            record.config_key(without=(SEED, "split_seed", "subset_fraction")))
    if sum(len(keys) for keys in configs.values()) > len(configs) or len(configs) > 1 and "" in configs:
        warnings.append(f"{len(tested)} runs of {sum(len(keys) for keys in configs.values())} different configs were "
                        f"evaluated on the test set ({', '.join(sorted(r.run_id for r in tested))}): choosing among "
                        "them by test accuracy turns the test set into a validation set")
    return Provenance(
        source=table.source, sweep_name=table.name, metric_name=table.metric_name,
        metric_goal=table.metric_goal, run_count=len(table.records),
        states=Counter(r.state for r in table.records), split_hashes=split_hashes,
        weights_versions=dict(weights), warnings=warnings,
        generated_utc=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), code_versions=code_versions,
        devices=devices, precisions=precisions,
    )


def _start_file(record: RunRecord) -> str:
    return str(record.summary.get(metrics.WEIGHTS_VERSION) or record.config.get("weights")).removeprefix("file:")


def _counts(counter: Counter) -> str:
    return ", ".join(f"{key} x{count}" for key, count in sorted(counter.items()))

