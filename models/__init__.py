"""Backbone registry, staged models, weights, freezing strategies and optimizer groups.

Importing the package registers every backbone (models/backbones.py). Knows nothing of data files, W&B or the
trainer. The registry and the strategies import no torch; the names that build or describe models import it on
first use, so a command that only reads the registry (`--help`, `check`, `report`) starts in well under a second.
"""

import importlib

from models import backbones as _backbones  # noqa: F401  (registers the backbones)
from models.freezing import (
    FreezeOptions,
    Freezing,
    Strategy,
    TrainPlan,
    plan_for_epoch,
    resolve_strategy,
    strategy_names,
    validate_options,
)
from models.registry import AuxHead, BackboneSpec, Stage, backbone_names, get_spec, register

_WITH_TORCH = {  # name -> module, imported on first use
    "describe_model": "models.describe", "describe_models": "models.describe",
    "count_parameters": "models.param_groups", "parameter_groups": "models.param_groups",
    "trainable_stage_names": "models.param_groups", "StagedModel": "models.staged",
    "build_model": "models.weights", "preprocessing_for": "models.weights", "resolve_weights": "models.weights",
}


def __getattr__(name: str):
    if name not in _WITH_TORCH:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WITH_TORCH[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "AuxHead", "BackboneSpec", "FreezeOptions", "Freezing", "Stage", "StagedModel", "Strategy", "TrainPlan",
    "backbone_names", "build_model", "count_parameters", "describe_model", "parameter_groups",
    "describe_models", "get_spec", "plan_for_epoch", "preprocessing_for", "register",
    "resolve_strategy", "resolve_weights", "strategy_names", "trainable_stage_names", "validate_options",
]
