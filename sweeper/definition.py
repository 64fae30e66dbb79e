"""A sweep definition (a W&B sweep YAML): read it, check it against the run config, pin it to its sweep folder.

The checks are the ones that would otherwise surface hours later: the W&B schema, parameter names that
`agent.py` does not know (W&B would pass them as `--name=value` and every trial would fail), a metric other
than the one the trainer logs (the sweep would optimise nothing), and parameters the local driver sets itself.
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from common.atomic import write_text
from common.errors import UserError
from common.parsing import nearest
from common.yamlfile import read_yaml
from models.registry import get_spec
from sweeper.table import TABLE_FILE
from trainer.config import (
    FIELDS,
    RECIPE,
    SPEC_KEYS,
    listed_values,
    load_yaml_values,
    parse_run_config,
    parse_value,
    suggest_parameter,
)
from trainer.metrics import VAL_ACC

SWEEP_FILE = "sweep.yaml"
FIXED_FILE = "fixed.yaml"  # the fixed --key=value arguments that change what is trained
# Set by the driver for every trial: where its run folder goes and which run it is.
DRIVER_OWNED = ("output_dir", "run_id", "resume")
# Parameters whose every value meets every listed model in some trial: a size one model cannot take fails its trials.
PAIRED_WITH_EVERY_MODEL = ("input_size", "eval_size")


def with_recipe(values: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """`values` as parse_run_config's sources: the recipe file's values (if `values` names one), then the rest."""
    if RECIPE not in values:
        return [values]
    return [load_yaml_values(values[RECIPE]), {key: value for key, value in values.items() if key != RECIPE}]


@dataclass(frozen=True)
class SweepDefinition:
    path: Path
    text: str
    config: dict

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.stem)

    @property
    def parameters(self) -> dict[str, dict]:
        return self.config["parameters"]

    def searched(self) -> list[str]:
        """Parameters the engine varies (everything without a single fixed `value`)."""
        return [name for name, spec in self.parameters.items() if not (isinstance(spec, dict) and "value" in spec)]


def definition_problems(config: Any) -> list[str]:
    """Every reason this sweep config cannot drive `agent.py`; [] when it is fine."""
    if not isinstance(config, dict):
        return ["the file must hold a mapping (method, metric, parameters, ...)"]
    if "tune" in config and "budget" in config and "parameters" not in config:
        return ["it is a protocol file, not a sweep: run its stages with `python agent.py protocol "
                "tune|recipes|compare|test|curve FILE`"]
    from sweeps import schema_violations_from_proposed_config

    problems = []  # ours first: they name the parameter, the schema's messages often do not
    if config.get("method") not in METHODS:
        problems.append(
            f"method {config.get('method')!r} is not one of "
            f"{', '.join(METHODS)}{nearest(str(config.get('method')), METHODS)}")
    if not isinstance(config.get("parameters"), dict):  # W&B's schema check itself would fail on it
        return [*problems,
                "parameters must be a mapping of each parameter's name to {value: v} or {values: [...]}, ..."]
    for name, spec in config["parameters"].items():
        if name in DRIVER_OWNED:
            problems.append(f"parameter {name!r} is set by the sweep driver for each trial; remove it")
        elif name == RECIPE:
            problems.extend(_recipe_problems(spec))
        elif name not in FIELDS:
            problems.append(f"parameter {name!r} is not a run parameter{suggest_parameter(name)}; "
                            "`python agent.py --help` lists them")
        elif not isinstance(spec, dict):
            problems.append(
                f"parameter {name!r} is {spec!r}; write {name}: {{value: v}} for a fixed value, or {{values: [...]}}")
        elif "parameters" in spec:
            problems.append(f"parameter {name!r} is nested; run parameters are flat")
        else:
            problems.extend(_spec_problems(name, spec))
            if config.get("method") == "bayes":
                problems.extend(_value_problems(name, spec))
    try:
        violations = schema_violations_from_proposed_config(config)
        if config.get("method") not in METHODS:  # named above with the fix; the schema's restatement is noise
            violations = [v for v in violations if f"{config.get('method')!r} is not one of" not in v]
        problems.extend(violations)
    except ValueError as exc:
        # the schema raises some violations (a parameter that is not a mapping) rather than list them
        problems.append(str(exc))
    metric = config.get("metric")
    metric_name = metric.get("name") if isinstance(metric, dict) else None
    goal = metric.get("goal") if isinstance(metric, dict) else None
    if metric_name != VAL_ACC:
        problems.append(
            f"metric name is {metric_name!r}; the trainer logs {VAL_ACC!r}: "
            f"use metric: {{name: {VAL_ACC}, goal: maximize}}")
    elif goal != "maximize":  # without a goal the engine minimises: it would search for the worst accuracy
        problems.append(
            f"metric goal is {goal!r}; {VAL_ACC} is an accuracy: use metric: {{name: {VAL_ACC}, goal: maximize}}")
    return problems


METHODS = ("grid", "random", "bayes")  # the engine's search methods this driver runs
# Distributions whose min/max are values of the parameter itself (log_uniform's are exponents, normal's unbounded).
_BOUNDED_BY_VALUES = ("int_uniform", "uniform", "q_uniform", "log_uniform_values", "q_log_uniform_values",
                      "inv_log_uniform_values")


def _spec_problems(name: str, spec: dict) -> list[str]:
    """A misspelled key, or a value the run config refuses, named here rather than failing every trial."""
    problems = [f"parameter {name!r} has the key {key!r}{nearest(key, SPEC_KEYS)}; "
                f"a parameter takes {', '.join(SPEC_KEYS[:3])}, ..."
                for key in spec if key not in SPEC_KEYS]
    for bound in ("min", "max"):  # YAML 1.1 reads 1e-5 (no dot) as a string; the schema's message does not say so
        if isinstance(spec.get(bound), str) and _number_like(spec[bound]):
            problems.append(f"parameter {name!r} has {bound}: {spec[bound]}, which YAML reads as a string; write it "
                            f"with a dot and a signed exponent, e.g. {_yaml_float(spec[bound])}")
    candidates = listed_values(spec)
    if spec.get("distribution", "") in _BOUNDED_BY_VALUES:
        candidates += [spec[bound] for bound in ("min", "max") if bound in spec]
    for value in candidates:
        try:
            parse_value(name, value)
        except UserError as exc:
            problems.append(f"parameter {name!r}: {exc}")
            break
    else:
        problems.extend(_drawn_problems(name, spec))
    return problems


def _drawn_problems(name: str, spec: dict) -> list[str]:
    """A distribution that can draw a value the parameter refuses (a seed past SEED_MAX, a normal's tails): every
    such draw would be a failed trial. The engine's own percentage point function gives the lowest and highest draw."""
    meta = FIELDS[name].metadata
    if "distribution" not in spec or (meta["low"] is None and meta["high"] is None):
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sweeps 0.3 trips a pydantic v2 deprecation warning; scipy warns at the tails
        from sweeps.params import HyperParameter

        try:
            parameter = HyperParameter(name, spec)
            lowest, highest = (float(np.asarray(parameter.ppf(p)).item()) for p in (np.nextafter(0.0, 1.0), 1.0))
        except Exception:  # a spec the schema refuses: its violations name it
            return []
    lowest, highest = min(lowest, highest), max(lowest, highest)
    low, high = meta["low"], meta["high"]
    allowed = f"{name} takes {'' if low is None else low}..{'' if high is None else high}"
    if (low is not None and lowest == -math.inf) or (high is not None and highest == math.inf):
        return [f"parameter {name!r}: distribution {spec['distribution']} draws values without bound, but {allowed}; "
                f"use one with a min and a max (uniform, int_uniform, log_uniform_values)"]
    if high is not None and highest > high:
        return [f"parameter {name!r}: distribution {spec['distribution']} draws values up to {_plain(highest)}, but "
                f"{allowed}; make it draw within that range"]
    if low is not None and lowest < low:
        return [f"parameter {name!r}: distribution {spec['distribution']} draws values down to {_plain(lowest)}, but "
                f"{allowed}; make it draw within that range"]
    return []


def _plain(number: float) -> str:
    """2147483648, not 2.14748e+09: a drawn bound as the user wrote it."""
    return str(int(number)) if number.is_integer() and abs(number) < 1e16 else f"{number:g}"


def _recipe_problems(spec: Any) -> list[str]:
    """The recipe parameter lists files (value or values) that each hold fixed run values."""
    if not (isinstance(spec, dict) and listed_values(spec) and set(spec) <= {"value", "values"}):
        return [f"parameter {RECIPE!r} lists YAML files of fixed values, one "
                f"per trial recipe: write {RECIPE}: {{values: [FILE, ...]}}"]
    problems = []
    for path in listed_values(spec):
        try:
            load_yaml_values(str(path))
        except UserError as exc:
            problems.append(f"parameter {RECIPE!r}: {exc} (a path relative to the folder the sweep runs from)")
    return problems


def _number_like(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _yaml_float(text: str) -> str:
    """How YAML writes `text`'s number so that it reads it as one: 1e-5 -> 1.0e-5."""
    mantissa, _, exponent = text.strip().lower().partition("e")
    if not exponent:
        return text
    mantissa = mantissa if "." in mantissa else f"{mantissa}.0"
    return f"{mantissa}e{exponent if exponent[0] in '+-' else '+' + exponent}"


def _value_problems(name: str, spec: dict) -> list[str]:
    """Searched values that bayes would misread: its model reads any falsy value as the first of `values`."""
    values = spec.get("values") if isinstance(spec.get("values"), list) else []
    problems = []
    if any(isinstance(value, bool) for value in values):
        problems.append(
            f"parameter {name!r} has a YAML boolean; write it as a string "
            "('true'/'false'): the engine reads false as the first value")
    elif any(not value for value in values[1:]):
        falsy = next(value for value in values[1:] if not value)
        problems.append(
            f"parameter {name!r} lists {falsy!r} after the first value; put "
            "it first: the engine reads it as the first value")
    return problems


def _axes(parameters: Mapping[str, Any], fixed: Mapping[str, Any], names: tuple[str, ...]) -> list[list]:
    """Each named parameter's values in this sweep: the fixed one, the listed ones, or [None] (its default)."""
    return [[fixed[name]] if name in fixed else listed_values(parameters.get(name)) or [None] for name in names]


def _recipes(parameters: Mapping[str, Any]) -> list[dict]:
    """The recipe files' values ([{}] without recipes); unreadable ones are definition_problems' to name."""
    try:
        return [load_yaml_values(str(path)) for path in listed_values(parameters.get(RECIPE))] or [{}]
    except UserError:
        return [{}]


def frozen_random_init(parameters: Mapping[str, Any], fixed: Mapping[str, Any]) -> list[str]:
    """The (model, strategy) pairs of this sweep that would freeze stages of a randomly initialised backbone
    (weights=none and a strategy other than full): heads trained on random features, ending near chance."""
    axes, recipes = _axes(parameters, fixed, ("model", "strategy", "weights")), _recipes(parameters)
    found = []
    for recipe, *values in itertools.product(recipes, *axes):
        chosen = {k: v for k, v in zip(("model", "strategy", "weights"), values) if v is not None}
        try:
            config = parse_run_config(recipe, {**fixed, **chosen})
        except UserError:
            continue  # unrunnable: unrunnable_values names it
        pair = f"{config.model} {config.strategy}"
        if config.weights == "none" and config.strategy != "full" and not get_spec(config.model).is_scratch:
            found += [pair] if pair not in found else []
    return found


def unrunnable_values(parameters: Mapping[str, Any], fixed: Mapping[str, Any]) -> list[str]:
    """Listed values that no trial of this sweep could train with, under any listed model and strategy (k_layers=7
    when the only model has 5 stages): each suggestion of one would be a failed trial."""
    axes, recipes = _axes(parameters, fixed, ("model", "strategy")), _recipes(parameters)

    def fits(name: str, value: Any) -> str | None:
        """None when some recipe, listed model and strategy trains
        with `name=value`; else the first reason none does."""
        used, errors = False, []
        for recipe, model, strategy in itertools.product(recipes, *axes):
            values = {
                **fixed, name: value, **{k: v for k, v in (("model", model), ("strategy", strategy)) if v is not None}}
            try:
                # Used as given: not dropped as unused, nor written over by a folded strategy (fraction as last_k).
                used = used or getattr(parse_run_config(recipe, values), name) == parse_value(name, value)
            except UserError as exc:
                errors.append(str(exc))
        return errors[0] if errors and not used else None

    def fits_every_model(name: str, value: Any) -> str | None:
        """Sizes pair with every listed model (the engine has no conditionals): the first model that cannot take it."""
        for recipe, model in itertools.product(recipes, axes[0]):
            values = {**fixed, name: value, **({"model": model} if model is not None else {})}
            try:
                parse_run_config(recipe, values)
            except UserError as exc:
                if name in str(exc):  # the size's own problem, not another value's
                    return str(exc)
        return None

    problems = []
    if RECIPE in parameters:
        for path, recipe in zip(listed_values(parameters[RECIPE]), recipes):
            try:
                parse_run_config(recipe, fixed)
            except UserError as exc:
                problems.append(f"recipe {path} cannot train: {exc}")
    for name, spec in parameters.items():
        if name in ("model", "strategy", RECIPE) or name in fixed:
            continue
        for value in listed_values(spec):
            reason = fits(name, value)
            if reason:
                problems.append(f"parameter {name!r} lists {value!r}, which no trial can train with: {reason}")
            elif name in PAIRED_WITH_EVERY_MODEL and fits_every_model(name, value):
                problems.append(f"parameter {name!r} lists {value!r}, which trials of some listed model cannot train "
                                f"with: {fits_every_model(name, value)}")
    for name, value in fixed.items():  # --k_layers=9 beside models of 5 stages: every trial would fail on it
        reason = None if name in ("model", "strategy") else fits(name, value)
        if reason:
            problems.append(f"--{name}={value} fits no trial of this sweep: {reason}")
    return problems


def load_definition(path: Path | str) -> SweepDefinition:
    path = Path(path)
    if not path.exists():
        raise UserError(f"sweep file {path} not found; the definitions live in sweeps/*.yaml")
    config = read_yaml(path, "sweep file")
    text = path.read_text()  # pinned as written, comments included; read_yaml has just checked it is small UTF-8
    problems = definition_problems(config)
    if problems:
        raise problems_error(path, problems)
    return SweepDefinition(path, text, config)


def problems_error(path: Path | str, problems: list[str], advice: str = "") -> UserError:
    """One line that carries every problem of a sweep file, so one edit fixes them all."""
    more = f" (also: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
    return UserError(f"sweep file {path}: {problems[0]}{more}{advice}")


def _searched(config: Any) -> Any:
    """A definition without the keys that say where W&B files its runs, not what is searched: a sweep folder of a YAML
    without `project` goes on with the same YAML that names it."""
    return {k: v for k, v in config.items() if k not in ("project", "entity")} if isinstance(config, dict) else config


def pin_definition(sweep_dir: Path, definition: SweepDefinition, bound: bool = True) -> bool:
    """Copy the definition into the sweep folder, or check that the folder's copy is the same sweep.

    Compared as parsed YAML, so comments and formatting may change but a search space may not: a table of
    trials from one space continued with another would mix two sweeps without saying so. A folder no trial
    bound yet (`bound=False`, see `binds_folder`) takes the definition it is given; True when that replaced
    another one.
    """
    pinned = sweep_dir / SWEEP_FILE
    existed = pinned.exists()
    if existed:
        existing = _read_pinned(pinned, f"replace it with a copy of {definition.path}, the definition it pins")
        if _searched(existing) == _searched(definition.config):
            return False
        if bound:
            raise UserError(f"{sweep_dir} holds a different sweep ({pinned} differs from {definition.path}); "
                            f"use --sweep_dir=NEW_DIR for a new sweep, or the original YAML to continue this one")
    write_text(pinned, definition.text)
    return existed


def _read_pinned(path: Path, fix: str) -> Any:
    """A YAML file the driver wrote into the sweep folder; damaged
    (edited by hand, a disk fault), it says how to mend it."""
    try:
        return read_yaml(path, "sweep folder file")
    except UserError as exc:
        raise UserError(f"{exc}; {fix}") from None


def effective_fixed(fixed: Mapping[str, Any]) -> dict[str, Any]:
    """The fixed `--key=value` arguments that change what is trained, parsed."""
    return {key: parse_value(key, value) for key, value in sorted(fixed.items()) if FIELDS[key].metadata["effective"]}


def pin_fixed(sweep_dir: Path, fixed: Mapping[str, Any], started_with: Mapping[str, Any] | None = None,
              bound: bool = True) -> bool:
    """Pin the fixed `--key=value` arguments that change what is trained (epochs, model...) like the definition:
    a second call with --epochs=1 after --epochs=2 would mix two sweeps in one table. Paths, devices and logging
    may differ from call to call (another machine).

    `started_with`: the fixed arguments of the folder's first trial (None without trials); they stand in for a
    fixed.yaml that older code did not write. A folder no trial bound yet takes the arguments it is given;
    True when they replaced others.
    """
    effective = effective_fixed(fixed)
    pinned = sweep_dir / FIXED_FILE
    if pinned.exists():
        before = _read_pinned(pinned, "delete it, and the fixed arguments of the folder's first trial stand in") or {}
    else:
        before = effective_fixed(started_with) if started_with is not None else None
    if before is not None and before != effective and bound:
        changed = sorted(
            set(before) ^ set(effective) | {k for k in set(before) & set(effective) if before[k] != effective[k]})
        was = ", ".join(f"--{k}={before[k]}" if k in before else f"no --{k}" for k in changed)
        source = pinned if pinned.exists() else sweep_dir / TABLE_FILE
        raise UserError(f"{sweep_dir} was started with {was} ({source}); pass the same fixed arguments to continue it, "
                        f"or --sweep_dir=NEW_DIR for a new sweep")
    if before != effective or not pinned.exists():
        write_text(pinned, yaml.safe_dump(effective, sort_keys=True))
    return before is not None and before != effective


def engine_config(definition: SweepDefinition, fixed: Mapping[str, Any]) -> dict:
    """The config handed to the engine: fixed `--key=value` arguments become constants, out of the search.

    Otherwise the engine would keep varying a parameter that every trial overrides, and every suggestion
    after the first would be a duplicate.
    """
    config = copy.deepcopy(definition.config)
    for name, value in fixed.items():
        if name in config["parameters"]:
            config["parameters"][name] = {"value": value}
    return config
