"""The fair protocol: tune every arm alike, compare each arm's winner on fresh seeds and split seeds, test once.

    python agent.py protocol tune    [PROTOCOL.yaml] --data_dir=DIR   stage 1: each arm's tuning sweep, trials_per_arm each
    python agent.py protocol recipes [PROTOCOL.yaml] [--wandb]        each arm's winner -> its recipe in sweeps/compare/
    python agent.py protocol compare [PROTOCOL.yaml] --data_dir=DIR   stage 2: the recipes on fresh seeds and split seeds
    python agent.py protocol test    [PROTOCOL.yaml]                  stage 3: the held-out test set, once per final run
    python agent.py protocol curve   [PROTOCOL.yaml] --data_dir=DIR   the data-efficiency curve (then `protocol test`)
    python agent.py protocol wandb   [PROTOCOL.yaml]                  the tuning sweeps created on W&B's server instead
    python agent.py report sweep_runs/<protocol name>                 one report over the stages

An arm is the scratch CNN, or one backbone with all its strategies. The protocol folder (sweep_runs/<name>/, or
--protocol_dir) holds an ordinary sweep folder per stage: tune/<arm>/, compare/, curve/; every trial records its
stage (the run parameter `stage`), so the report tells tuning numbers from final ones wherever the runs come from.
"""  # noqa: E501  (the usage table: one command a line)

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common.atomic import write_text
from common.errors import UserError
from common.yamlfile import read_yaml
from models.registry import get_spec
from report.table import SEED_KEYS
from sweeper.definition import RECIPE, load_definition
from trainer.config import FIELDS, listed_values

PROTOCOL_FILE = Path("sweeps/protocol.yaml")
STAGES = ("tune", "recipes", "compare", "test", "curve", "wandb")
WANDB_FILE = "wandb.json"  # arm -> entity/project/sweep_id of the tuning sweeps `protocol wandb` created
PRETRAINED, FROM_SCRATCH = "pretrained", "from_scratch"
# Never carried into a recipe, never fixed on a final stage's command line: the final stages vary them.
VARIED_BY_STAGES = SEED_KEYS


@dataclass(frozen=True)
class Budget:
    """The training budget of one kind of start: patience on val_acc, with an epoch cap."""

    epochs: int
    patience: int

    def text(self) -> str:
        return f"at most {self.epochs} epochs, stopping after {self.patience} without a better val_acc"


@dataclass(frozen=True)
class Arm:
    model: str
    search: Path  # the sweep YAML whose space this arm is tuned over (its model fixed to this one)
    from_scratch: bool  # random init or the scratch CNN: the larger budget


@dataclass(frozen=True)
class Protocol:
    path: Path
    name: str
    trials_per_arm: int
    tune_seed: int
    tune_split_seed: int
    arms: tuple[Arm, ...]
    budgets: Mapping[str, Budget]
    compare: Path
    curve: Path | None
    recipes_dir: Path

    def budget(self, arm: Arm) -> Budget:
        return self.budgets[FROM_SCRATCH if arm.from_scratch else PRETRAINED]

    def folder(self, protocol_dir: Path | None) -> Path:
        return Path(protocol_dir) if protocol_dir else Path("sweep_runs") / self.name

    def recipe_path(self, arm: Arm) -> Path:
        return self.recipes_dir / f"{arm.model}.yaml"


def load_protocol(path: Path | str = PROTOCOL_FILE) -> Protocol:
    """Read and check a protocol file; every mistake is one line naming the file and the key."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"protocol file {path} not found; the default is {PROTOCOL_FILE}")
    data = read_yaml(path, "protocol file")

    def need(mapping: Any, key: str, kind: type, where: str):
        value = mapping.get(key) if isinstance(mapping, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise UserError(f"protocol file {path}: {where}{key} must be a {kind.__name__} (see {PROTOCOL_FILE})")
        return value

    tune = need(data, "tune", dict, "")
    trials = need(tune, "trials_per_arm", int, "tune.")
    if trials < 1:
        raise UserError(f"protocol file {path}: tune.trials_per_arm={trials} must be at least 1")
    arms = []
    for model, search in need(tune, "arms", dict, "tune.").items():
        spec = get_spec(str(model))  # a typo is named with the registry's models
        if not isinstance(search, str) or not Path(search).is_file():
            raise UserError(f"protocol file {path}: arm {model}'s search space {search!r} is not a sweep file (a path "
                            f"relative to the folder the protocol runs from)")
        fixed_weights = (load_definition(search).parameters.get("weights") or {}).get("value")
        random_init = fixed_weights is not None and str(fixed_weights).lower() == "none"
        arms.append(Arm(spec.name, Path(search), spec.is_scratch or random_init))
    if not arms:
        raise UserError(f"protocol file {path}: tune.arms lists no arm; name the scratch CNN and one backbone at least")
    budgets = {}
    for kind in (PRETRAINED, FROM_SCRATCH):
        entry = need(need(data, "budget", dict, ""), kind, dict, "budget.")
        budgets[kind] = Budget(need(entry, "epochs", int, f"budget.{kind}."),
                               need(entry, "patience", int, f"budget.{kind}."))
        if budgets[kind].epochs < 1 or budgets[kind].patience < 0:
            raise UserError(f"protocol file {path}: budget.{kind} needs epochs >= 1 and patience >= 0")
    compare = Path(need(data, "compare", str, ""))
    seeds = {}
    for key in ("seed", "split_seed"):
        seeds[key] = need(tune, key, int, "tune.") if key in tune else 0
        if not 0 <= seeds[key] <= FIELDS[key].metadata["high"]:
            raise UserError(
                f"protocol file {path}: tune.{key}={seeds[key]} is out of range [0, {FIELDS[key].metadata['high']}]")
    curve = need(data, "curve", str, "") if data.get("curve") is not None else None
    recipes = need(data, "recipes_dir", str, "") if data.get("recipes_dir") is not None else str(compare.parent
                                                                                                 / "compare")
    return Protocol(path, str(data.get("name") or path.stem), trials, seeds["seed"], seeds["split_seed"],
                    tuple(arms), budgets, compare, Path(curve) if curve else None, Path(recipes))


# --- stage 1: tune ------------------------------------------------------------------------------------

def tune_fixed(protocol: Protocol, arm: Arm, user_fixed: Mapping[str, str]) -> dict[str, str]:
    """What every tuning trial of an arm shares: its model, its kind's budget, the tuning seed and split, the stage."""
    budget = protocol.budget(arm)
    return {**user_fixed, "model": arm.model, "epochs": str(budget.epochs), "patience": str(budget.patience),
            "seed": str(protocol.tune_seed), "split_seed": str(protocol.tune_split_seed), "stage": "tune"}


def run_tune(protocol: Protocol, protocol_dir: Path | None, workers: int, user_fixed: Mapping[str, str]) -> bool:
    """Every arm's tuning sweep, trials_per_arm distinct configs each; False when interrupted."""
    from sweeper.local import run_local_sweep

    folder = protocol.folder(protocol_dir)
    for arm in protocol.arms:
        print(f"== tune {arm.model}: {protocol.trials_per_arm} trials of {arm.search}, {protocol.budget(arm).text()} "
              f"-> {folder / 'tune' / arm.model}", flush=True)
        fixed = tune_fixed(protocol, arm, user_fixed)
        if run_local_sweep(arm.search, protocol.trials_per_arm, workers, folder / "tune" / arm.model, fixed) is None:
            return False
    return True


# --- stage 2a: recipes ------------------------------------------------------------------------------

def write_recipes(protocol: Protocol, protocol_dir: Path | None, wandb: bool = False) -> list[Path]:
    """Each arm's winner (its best finished tuning trial by best val_acc) written as the recipe compare.yaml reads,
    with every value it trained with: batch size and resolution included, seeds left to the compare stage."""
    from report.sources import load_table
    from report.stats import rank_key
    from trainer.config import FIELDS

    folder = protocol.folder(protocol_dir)
    sources = _wandb_sweeps(folder) if wandb else {}
    written = []
    for arm in protocol.arms:
        source = sources.get(arm.model) if wandb else str(folder / "tune" / arm.model)
        if source is None:
            raise UserError(f"arm {arm.model} has no W&B tuning sweep in {folder / WANDB_FILE}: create them with "
                            f"`python agent.py protocol wandb {protocol.path}`")
        if not wandb and not Path(source).is_dir():
            raise UserError(
                f"arm {arm.model} has no tuning sweep in {source}: run `python "
                f"agent.py protocol tune {protocol.path}` first")
        table = load_table(source)
        finished = sorted((r for r in table.complete() if r.model == arm.model), key=rank_key)
        if not finished:
            states = ", ".join(sorted({r.state for r in table.records})) or "no runs"
            raise UserError(f"arm {arm.model} has no finished tuning trial in {source} ({states}): the compare stage "
                            "needs one per arm; run its tuning sweep further")
        winner = finished[0]
        values = {key: value for key, value in winner.effective_config.items()
                  if key in FIELDS and key not in VARIED_BY_STAGES and value is not None}
        values = _without_derived(values)
        path = protocol.recipe_path(arm)
        header = (f"# The recipe of arm {arm.model}, written by `agent.py protocol recipes` on "
                  f"{datetime.date.today().isoformat()}: the best finished tuning trial of {source},\n"
                  f"# run {winner.run_id}, best val_acc {winner.best_val_acc:.4f} at epoch {winner.best_epoch} of "
                  f"{winner.epochs_completed} ({len(finished)} finished of {len(table.records)} trials).\n"
                  f"# Every value it trained with; the compare stage varies seed and split_seed.\n")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, header + yaml.safe_dump(values, sort_keys=False))
        print(f"recipe {path}: {arm.model} from {winner.run_id} (val_acc {winner.best_val_acc:.4f})", flush=True)
        written.append(path)
    compare = protocol.compare
    print(f"then: python agent.py check {compare} && wandb sweep {compare}" if wandb
          else f"then: python agent.py protocol compare {protocol.path} --data_dir=DIR", flush=True)
    return written


# Values normalisation derives from others (eval_size from
# input_size; InceptionV3's aux loss from its size): written into
# a recipe they would stay behind when its input_size is changed or swept on top of it.
DERIVED = ("eval_size", "aux_loss_weight")


def _without_derived(values: dict) -> dict:
    """The recipe's values without those that normalisation would write the same from the rest."""
    from trainer.config import config_hash, parse_run_config

    whole = config_hash(parse_run_config(values))
    for key in DERIVED:
        if key in values and config_hash(parse_run_config({k: v for k, v in values.items() if k != key})) == whole:
            values = {k: v for k, v in values.items() if k != key}
    return values


def _wandb_sweeps(folder: Path) -> dict[str, str]:
    try:
        return json.loads((folder / WANDB_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder / WANDB_FILE} cannot be read "
                        f"({type(exc).__name__}): run `agent.py protocol wandb` again") from None


# --- stage 2b and the curve: final sweeps -------------------------------------------------------------

def grid_size(parameters: Mapping[str, Any]) -> int:
    """Runs in a grid: the product of its listed values' counts."""
    return math.prod(len(spec["values"]) for spec in parameters.values() if isinstance(spec, dict)
                     and isinstance(spec.get("values"), list))


def final_problems(protocol: Protocol, sweep_yaml: Path, tuned_seeds: set, stage: str) -> list[str]:
    """Why a final sweep would not be a fair comparison: an arm without its recipe, a seed tuning used, one split."""
    # as it is: its recipes may not exist yet, one of the problems to name
    raw = read_yaml(sweep_yaml, "sweep file") or {}
    if not isinstance(raw, dict):
        return [f"{sweep_yaml} must hold a mapping (method, metric, parameters, ...)"]
    parameters = raw.get("parameters") if isinstance(raw.get("parameters"), dict) else {}
    problems = []
    if raw.get("method") != "grid":
        problems.append(f"{sweep_yaml} must be a grid (method: grid): every recipe gets every seed, none is chosen")
    listed = {Path(str(p)).resolve() for p in listed_values(parameters.get(RECIPE))}
    seeds, splits = listed_values(parameters.get("seed")), listed_values(parameters.get("split_seed"))
    for arm in protocol.arms:
        if protocol.recipe_path(arm).resolve() not in listed:
            problems.append(f"arm {arm.model} has no recipe in {sweep_yaml} (expected {protocol.recipe_path(arm)})")
        elif not protocol.recipe_path(arm).is_file():
            problems.append(
                f"recipe {protocol.recipe_path(arm)} does not exist: run `python agent.py protocol recipes` first")
    if len(seeds) < 2:
        problems.append(f"{sweep_yaml} lists {len(seeds)} seed(s): list two or more fresh ones "
                        "(none of the tuning seeds), so each arm's mean has an interval")
    reused = sorted(set(seeds) & tuned_seeds, key=str)
    if reused:
        problems.append(f"{sweep_yaml} lists seed(s) {reused} that tuning used: the final runs need fresh seeds")
    if protocol.tune_split_seed in splits:  # its validation images chose the recipes
        problems.append(f"{sweep_yaml} lists split_seed {protocol.tune_split_seed}, the split tuning selected on: the "
                        "final runs need other splits, so no number of theirs sits on the selection split")
    if stage == "compare" and len(splits) < 2:
        problems.append(f"{sweep_yaml} lists {len(splits)} split_seed(s): list two or more, "
                        f"so the intervals include the variance of the split")
    if listed_values(parameters.get("stage")) != [stage]:
        problems.append(
            f"{sweep_yaml} must fix stage: {{value: {stage}}}, so its runs are reported as the {stage} stage")
    if not problems:
        load_definition(sweep_yaml)  # every check a sweep makes, now that its recipes exist
    return problems


def _overridden(stage: str, fixed: Mapping[str, str]) -> list[str]:
    """Command-line values that would fix what a final stage varies."""
    return [f"--{key} would override the {stage} sweep's own {key}s: the final runs vary it; drop the argument"
            for key in VARIED_BY_STAGES if key in fixed]


def refuse(stage: str, problems: list[str]) -> None:
    if problems:
        more = f" (also: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise UserError(f"{stage} stage: {problems[0]}{more}")


def check_stage_sweep(sweep_yaml: Path, fixed: Mapping[str, str], protocol_path: Path | None = None) -> None:
    """The protocol's checks of a compare or curve sweep started outside `agent.py protocol` (`wandb sweep` after
    `agent.py check`, or `agent.py sweep`), when a protocol file names `sweep_yaml` as that stage's sweep (the
    default one, or a protocol.yaml beside the sweep: sweeps/tiny/): the same refusals as `agent.py protocol
    compare`. Any other sweep, or no such protocol file: nothing to check."""
    target = Path(sweep_yaml).resolve()
    candidates = [Path(protocol_path)] if protocol_path else [PROTOCOL_FILE, Path(sweep_yaml).parent / "protocol.yaml"]
    for path in dict.fromkeys(p for p in candidates if p.is_file()):
        try:  # which sweeps it names, read before the rest: a protocol that names others is not this sweep's to judge
            raw = read_yaml(path, "protocol file")
        except UserError:
            continue
        named = {stage: raw.get(stage) for stage in ("compare", "curve")} if isinstance(raw, dict) else {}
        stage = next((s for s, p in named.items() if isinstance(p, str) and Path(p).resolve() == target), None)
        if stage is not None:
            protocol = load_protocol(path)  # this one names the sweep: a mistake in it is the user's to fix now
            break
    else:
        return
    refuse(stage, final_problems(protocol, Path(sweep_yaml), tuned_seeds(protocol, None), stage)
           + _overridden(stage, fixed))


def tuned_seeds(protocol: Protocol, protocol_dir: Path | None) -> set:
    """The seeds the tuning trials trained with: the protocol's, and any a tuning run's config records."""
    seeds = {protocol.tune_seed}
    for config in (protocol.folder(protocol_dir) / "tune").glob("*/runs/*/config.yaml"):
        try:
            saved = read_yaml(config, "run config")
        except UserError:  # a damaged record says nothing of its seed; the protocol's own seed is in the set anyway
            continue
        if isinstance(saved, dict):
            seeds.add(saved.get("seed"))
    return seeds - {None}


def run_final(protocol: Protocol, stage: str, protocol_dir: Path | None, workers: int,
              user_fixed: Mapping[str, str]) -> bool:
    """The compare or curve sweep: its whole grid, in its own folder; False when interrupted."""
    from sweeper.local import run_local_sweep

    sweep_yaml = protocol.compare if stage == "compare" else protocol.curve
    if sweep_yaml is None:
        raise UserError(f"protocol file {protocol.path} names no {stage} sweep: add `{stage}: sweeps/{stage}.yaml`")
    refuse(stage, final_problems(protocol, sweep_yaml, tuned_seeds(protocol, protocol_dir), stage)
           + _overridden(stage, user_fixed))
    count = grid_size(load_definition(sweep_yaml).parameters)
    folder = protocol.folder(protocol_dir) / stage
    print(f"== {stage}: {count} runs of {sweep_yaml} -> {folder}", flush=True)
    return run_local_sweep(sweep_yaml, count, workers, folder, dict(user_fixed)) is not None


# --- stage 3: test ------------------------------------------------------------------------------------

def run_tests(protocol: Protocol, protocol_dir: Path | None, data_dir: str | None, device: str = "auto") -> list[dict]:
    """Every final run that trained to its end, on the held-out
    test set, once: runs tested before are not read again."""
    from trainer import metrics as M
    from trainer.evaluate import evaluate_on_test_set
    from trainer.record import BEST_CHECKPOINT, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, RunRecord

    folder = protocol.folder(protocol_dir)
    results = []
    for stage in ("compare", "curve"):
        # Run folders only, as the report reads them: W&B's offline `wandb/` folder sits beside them.
        runs = sorted(run for run in (folder / stage / "runs").glob("*/")
                      if any((run / name).exists() for name in (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE)))
        for run in runs:
            summary = RunRecord.read_summary(run)
            if summary.get(M.STATE) != M.FINISHED or not (run / BEST_CHECKPOINT).exists():
                print(f"{stage} run {run.name}: not tested ({summary.get(M.STATE) or 'no summary'}; the report counts "
                      "it in its arm's n/k as lost or not finished)")
                continue
            if (run / "test" / "test.json").exists():
                continue  # read once per final run: a second look is not a second sample
            result = evaluate_on_test_set(run, data_dir=data_dir, device=device)
            print(f"{stage} run {run.name}: test_acc {result[M.TEST_ACC]:.4f}", flush=True)
            results.append(result)
    if not results:
        print(f"nothing to test in {folder}: every finished compare and curve run has its test result")
    return results


# --- W&B ----------------------------------------------------------------------------------------------

def wandb_tune_config(protocol: Protocol, arm: Arm, user_fixed: Mapping[str, str], project: str) -> dict:
    """An arm's tuning sweep for W&B's server: its search space with the arm's fixed values written in (the server
    passes only what the YAML holds) and run_cap = trials_per_arm, so the count is set once, in the protocol."""
    from trainer.config import parse_value

    config = json.loads(json.dumps(load_definition(arm.search).config))  # a deep copy of plain values
    for name, value in tune_fixed(protocol, arm, user_fixed).items():
        config["parameters"][name] = {"value": parse_value(name, value)}
    config.update(name=f"{protocol.name}-tune-{arm.model}", run_cap=protocol.trials_per_arm, project=project)
    return config


def create_wandb_sweeps(protocol: Protocol, protocol_dir: Path | None, user_fixed: Mapping[str, str], project: str,
                        entity: str | None) -> dict[str, str]:
    """Create each arm's tuning sweep on W&B and say how to run them; their ids go to the protocol folder, where
    `protocol recipes --wandb` finds them."""
    try:
        import wandb
    except ImportError:
        raise UserError("the W&B side needs the wandb package: pip install -e .") from None
    folder = protocol.folder(protocol_dir)
    created = _wandb_sweeps(folder)
    for arm in protocol.arms:
        if arm.model in created:
            continue
        config = wandb_tune_config(protocol, arm, user_fixed, project)
        try:
            sweep_id = wandb.sweep(config, project=project, entity=entity or None)
        except Exception as exc:  # no login, no network: one line
            raise UserError(f"cannot create the W&B sweep of arm {arm.model} "
                            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): check `wandb login` "
                            "and the network, or tune offline with `agent.py protocol tune`") from None
        path = f"{entity or wandb.Api().default_entity}/{project}/{sweep_id}"
        created[arm.model] = path
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / WANDB_FILE, json.dumps(created, indent=2, sort_keys=True))
    for arm in protocol.arms:
        print(
            f"wandb agent {created[arm.model]}    # arm {arm.model}: stops by "
            f"itself after {protocol.trials_per_arm} runs (run_cap)")
    print(f"then: python agent.py protocol recipes {protocol.path} --wandb")
    return created
