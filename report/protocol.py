"""The fair protocol's numbers, computed once from the `RunTable`: markdown and plots only format them.

Runs say which stage they belong to (the run parameter `stage`): `tune` runs choose each arm's recipe on the
validation split; `compare` runs train those recipes on fresh seeds and split seeds and are tested once each;
`curve` runs train them on nested subsets of the training images. An arm is what a run started from and trained:
the scratch CNN, or one backbone (its model label: `resnet50`, `resnet50 (random init)`, ...).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from report.stats import CONFIDENCE, DifferenceCI, MeanCI, difference_ci, mean_ci
from report.table import COMPARE, CURVE, IMAGENET, NUM_IMAGES, SCRATCH, SEED_KEYS, TUNE, RunRecord, RunTable
from trainer import metrics
from trainer.config import RECIPE, listed_values


def arm_of(record: RunRecord) -> str:
    return str(record.model_label)


@dataclass
class ArmResult:
    """One arm's final numbers: one value per run (seed x split seed) that trained to its end."""

    arm: str
    start: str
    metric: str | None  # "test_acc" when every counted run was tested, "best val_acc" when not; None: no result
    values: list[float]
    ci: MeanCI | None
    runs: list[RunRecord]  # counted
    lost: list[RunRecord]  # failed, diverged or out of memory: in n/k, never in the mean
    unfinished: list[RunRecord]  # preempted, running or stopped early: planned, not (yet) a result; in n/k too
    untested: list[RunRecord]  # finished but without a test result yet
    configs: int  # distinct recipes among its runs (seeds aside): 1 in a protocol
    splits: int  # distinct split seeds of the counted runs (what its mean is over)
    planned_splits: int  # distinct split seeds it was to run: its runs' and the stage's grid's
    missing: list[str] = field(default_factory=list)  # grid cells ("seed 101, split_seed 2") with no run at all
    still_improving: list[RunRecord] = field(default_factory=list)  # counted runs whose last epoch was their best

    @property
    def planned(self) -> int:
        return len(self.runs) + len(self.lost) + len(self.unfinished) + len(self.missing)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None


@dataclass
class Gap:
    arm: str  # a fine-tuned arm, against the scratch CNN
    difference: float  # mean(arm) - mean(scratch)
    ci: DifferenceCI | None
    counts: str = ""  # n/k of both sides: "4/6 vs 2/6"


@dataclass
class CurvePoint:
    arm: str
    start: str
    subset_fraction: float
    images_per_class: float
    values: list[float]
    ci: MeanCI | None
    lost: int


@dataclass
class Crossover:
    arm: str
    sizes: list[float]  # images per class of the arm's points, ascending
    # fine-tuning ahead by more than the interval at each size; None: undetermined (fewer than two runs a side, no
    # scratch point at that size, or no spread to give an interval)
    wins: list[bool | None]
    below: float | None  # the largest size up to which it wins at every size; None when it does not at the smallest

    @property
    def line_at(self) -> float | None:
        """Where a plot may draw the crossover: the size up to which it wins, when every size after it is judged
        and none is a win (the statement's "up to X; from Y on"). None otherwise."""
        after = [win for size, win in zip(self.sizes, self.wins) if self.below is not None and size > self.below]
        return self.below if after and None not in after and not any(after) else None

    def statement(self) -> str:
        interval = f"by more than the {CONFIDENCE:.0%} interval"
        known = [(size, win) for size, win in zip(self.sizes, self.wins) if win is not None]
        unknown = [size for size, win in zip(self.sizes, self.wins) if win is None]
        undetermined = (f"; undetermined at {_sizes(unknown)} images per class (fewer than two runs a side there, "
                        "or no spread)" if unknown else "")
        if not known:
            return f"{self.arm}: no data size where both it and the scratch CNN have two or more runs{undetermined}"
        winning = [size for size, win in known if win]
        if all(win for _, win in known):
            where = "at every size measured" if not unknown else "at every size where the gap has an interval"
            return f"{self.arm} beats the scratch CNN {interval} {where} (up to {known[-1][0]:g} images per class)" + (
                undetermined)
        if not winning:
            return (f"{self.arm} beats the scratch CNN {interval} at no size measured "
                    f"({_sizes([size for size, _ in known])} images per class){undetermined}")
        first_other = next(size for size, win in zip(self.sizes, self.wins) if win is not True)
        if self.below is not None and not any(win for size, win in known if size > first_other):
            after = ("the interval of the gap holds 0 or favours the scratch CNN" if first_other not in unknown
                     else "it is undetermined, then not ahead")
            return (f"{self.arm} beats the scratch CNN {interval} up to {self.below:g} images per class; from "
                    f"{first_other:g} on, {after}{undetermined}")
        # Wins that are no prefix of the sizes: no size below which it always wins, only where it does.
        return (f"{self.arm} beats the scratch CNN {interval} at {_sizes(winning)} images per class but not at "
                f"{_sizes([size for size, win in known if not win])}: no size below which it always wins"
                f"{undetermined}")


def _sizes(sizes: list[float]) -> str:
    return ", ".join(f"{size:g}" for size in sizes)


@dataclass
class ProtocolSummary:
    tuning_trials: dict[str, int]  # arm -> trials its tuning sweep ran (duplicates aside)
    short_arms: list[str]  # arms tuned with fewer trials than another
    budgets: dict[str, str]  # arm -> its training rule, from its runs' configs
    compare: list[ArmResult]
    gaps: list[Gap]
    reused_seeds: list[str]  # final runs whose seed a tuning run of the same arm used
    single_split: bool  # compare runs all on one split seed: intervals without split variance
    curve: list[CurvePoint]
    crossovers: list[Crossover]
    curve_metric: str = metrics.TEST_ACC
    allow_lost_seeds: bool = False
    notes: list[str] = field(default_factory=list)
    grid_known: bool = False  # the compare stage's grid was read (a local sweep folder): cells never run count in n/k
    absent_recipes: int = 0  # recipes of the compare grid without any run (the grid lists more than have runs)
    test_images: int | None = None  # images in the test set the compare runs were tested on
    curve_still_improving: list[RunRecord] = field(default_factory=list)

    @property
    def staged(self) -> bool:
        return bool(self.tuning_trials or self.compare or self.curve)


def _value(record: RunRecord, tested: bool) -> float | None:
    return record.test_acc if tested else record.best_val_acc


def _by_id(records) -> list[RunRecord]:
    return sorted(records, key=lambda r: r.run_id)


def _cell(values: dict) -> tuple[str, ...]:
    return tuple(str(values.get(key)) for key in SEED_KEYS)


def _cell_text(cell: tuple[str, ...]) -> str:
    return ", ".join(f"{key} {value}" for key, value in zip(SEED_KEYS, cell))


def _arm_results(records: list[RunRecord], grid: dict | None = None) -> tuple[list[ArmResult], int]:
    """Each arm's final numbers, and how many recipes of the stage's grid (when known) have no run at all. Counted,
    not matched by name: the grid names recipe files, relative to where the sweep ran, that the report may not see."""
    by_arm: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        if not record.refused_before_training:  # a setting to fix, retried by the same command: no seed of the arm
            by_arm[arm_of(record)].append(record)
    grid = grid or {}
    planned_cells = list(itertools.product(*(map(str, listed_values(grid.get(key))) for key in SEED_KEYS)))
    absent = max(0, len(listed_values(grid.get(RECIPE))) - len(by_arm))
    results = []
    for arm, members in by_arm.items():
        counted = [r for r in members if r.is_complete]
        lost = [r for r in members if r.is_lost]
        unfinished = [r for r in members if r not in counted and r not in lost]
        tested = bool(counted) and all(r.test_acc is not None for r in counted)
        values = [v for v in (_value(r, tested) for r in counted) if v is not None]
        ran = {_cell(r.config) for r in members}
        missing = [_cell_text(cell) for cell in planned_cells if cell not in ran]
        results.append(ArmResult(
            arm, members[0].start,
            (metrics.TEST_ACC if tested else f"best {metrics.VAL_ACC}") if counted else None, values, mean_ci(values),
            _by_id(counted), _by_id(lost), _by_id(unfinished), _by_id(r for r in counted if r.test_acc is None),
            len({r.config_key_as_asked(without=SEED_KEYS) for r in members} or {""}),
            len({str(r.config.get("split_seed")) for r in counted}),
            len({str(r.config.get("split_seed")) for r in members} | {cell[1] for cell in planned_cells}),
            missing, _by_id(r for r in counted if r.still_improving)))
    # Fine-tuned arms by their mean, then the others; the scratch CNN last, the baseline the gaps are taken to.
    order = {IMAGENET: 0, SCRATCH: 2}
    results.sort(key=lambda a: (order.get(a.start, 1), -(a.mean if a.mean is not None else -1), a.arm))
    return results, absent


def _gaps(results: list[ArmResult]) -> list[Gap]:
    """Each ImageNet fine-tuned arm minus the scratch CNN, on the same metric only: a test mean minus a validation mean
    is no gap (the arm still waiting for `protocol test` is said to be)."""
    scratch = next((a for a in results if a.start == SCRATCH and a.values), None)
    if scratch is None:
        return []
    return [Gap(a.arm, a.mean - scratch.mean, difference_ci(a.values, scratch.values),
                f"{len(a.runs)}/{a.planned} vs {len(scratch.runs)}/{scratch.planned} runs")
            for a in results if a.start == IMAGENET and a.values and a.metric == scratch.metric]


def _curve(records: list[RunRecord], tested: bool) -> list[CurvePoint]:
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[(arm_of(record), float(record.config.get("subset_fraction") or 1.0))].append(record)
    points = []
    for (arm, fraction), members in sorted(groups.items()):
        counted = [r for r in members if r.is_complete]
        values = [v for v in (_value(r, tested) for r in counted) if v is not None]
        per_class = [r.summary.get("num_train", 0) / len(r.summary.get("classes") or [0]) for r in counted
                     if r.summary.get("num_train") and r.summary.get("classes")]
        points.append(CurvePoint(arm, members[0].start, fraction,
                                 round(float(np.mean(per_class)), 1) if per_class else fraction,
                                 values, mean_ci(values), sum(r.is_lost for r in members)))
    return points


def crossovers(points: list[CurvePoint]) -> list[Crossover]:
    """For each fine-tuned arm: at which data sizes it beats the scratch CNN by more than the interval of the gap, and
    the size below which it always does (Welch interval over seeds at each size)."""
    scratch = {p.subset_fraction: p for p in points if p.start == SCRATCH}
    out = []
    for arm in sorted({p.arm for p in points if p.start == IMAGENET}):
        mine = sorted((p for p in points if p.arm == arm), key=lambda p: p.images_per_class)
        sizes, wins = [], []
        for point in mine:  # every size the arm has: one the gap cannot be judged at is undetermined, never skipped
            other = scratch.get(point.subset_fraction)
            gap = difference_ci(point.values, other.values) if other else None
            sizes.append(point.images_per_class)
            wins.append(None if gap is None or gap.no_spread else gap.low > 0)
        below = None
        for size, win in zip(sizes, wins):
            if win is not True:
                break
            below = size
        out.append(Crossover(arm, sizes, wins, below))
    return out


def summarise_protocol(table: RunTable, allow_lost_seeds: bool = False) -> ProtocolSummary:
    staged = defaultdict(list)
    for record in table.records:
        staged[record.stage].append(record)
    tuning = [r for r in staged[TUNE] if not r.refused_before_training]
    # Distinct configs, as the offline sweep counts its trials:
    # W&B's run_cap counts equivalent runs (fraction 0.5 beside
    # last_k 2) twice, and an arm that got fewer distinct configs than another is flagged either way.
    configs: dict[str, set[str]] = defaultdict(set)
    for record in tuning:
        configs[arm_of(record)].add(record.config_key(without=("seed",)))
    trials = Counter({arm: len(keys) for arm, keys in configs.items()})
    most = max(trials.values(), default=0)
    short = sorted(arm for arm, count in trials.items() if count < most)
    budgets: dict[str, set[str]] = defaultdict(set)
    for record in [*tuning, *staged[COMPARE], *staged[CURVE]]:
        epochs, patience = record.config.get("epochs"), record.config.get("patience")
        budgets[arm_of(record)].add(
            f"at most {epochs} epochs" + (f", patience {patience}" if patience else ", no early stopping"))
    grid = table.grids.get(COMPARE)
    compare, absent = _arm_results(staged[COMPARE], grid)
    tuned_seeds = defaultdict(set)
    for record in tuning:
        tuned_seeds[arm_of(record)].add(record.config.get("seed"))
    reused = sorted(r.run_id for r in [*staged[COMPARE], *staged[CURVE]]
                    if r.config.get("seed") in tuned_seeds.get(arm_of(r), ()))
    curve_runs = [r for r in staged[CURVE] if r.is_complete]
    curve_tested = bool(curve_runs) and all(r.test_acc is not None for r in curve_runs)
    curve = _curve(staged[CURVE], curve_tested)
    return ProtocolSummary(
        tuning_trials=dict(sorted(trials.items())), short_arms=short,
        budgets={arm: "; ".join(sorted(rules)) for arm, rules in sorted(budgets.items())},
        compare=compare, gaps=_gaps(compare), reused_seeds=reused,
        single_split=bool(compare) and max(a.planned_splits for a in compare) < 2,
        curve=curve, crossovers=crossovers(curve),
        curve_metric=metrics.TEST_ACC if curve_tested else f"best {metrics.VAL_ACC}", allow_lost_seeds=allow_lost_seeds,
        grid_known=grid is not None, absent_recipes=absent,
        test_images=max((int(n) for r in staged[COMPARE] if r.test and isinstance(n := r.test.get(NUM_IMAGES), int)
                         and not isinstance(n, bool)), default=None),
        curve_still_improving=_by_id(r for r in curve_runs if r.still_improving),
    )
