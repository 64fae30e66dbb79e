"""Backbone registry, staged models, weights, freezing strategies and optimizer groups.

Importing the package registers every backbone (models/backbones.py). Knows nothing of data files, W&B or the
trainer.
"""

from models import backbones as _backbones  # noqa: F401  (registers the backbones)
from models.describe import describe_model, describe_models
from models.freezing import (
    FreezeOptions,
    Strategy,
    TrainPlan,
    plan_for_epoch,
    resolve_strategy,
    strategy_names,
    validate_options,
)
from models.param_groups import add_missing_groups, build_param_groups, count_parameters, groups_for_stages, trainable_stage_names
from models.registry import AuxHead, BackboneSpec, Stage, backbone_names, get_spec, register
from models.staged import StagedModel
from models.weights import build_model, preprocessing_for, resolve_weights

__all__ = [
    "AuxHead", "BackboneSpec", "FreezeOptions", "Stage", "StagedModel", "Strategy", "TrainPlan",
    "backbone_names", "build_model", "build_param_groups", "count_parameters", "describe_model",
    "add_missing_groups", "describe_models", "get_spec", "groups_for_stages", "plan_for_epoch", "preprocessing_for", "register",
    "resolve_strategy", "resolve_weights", "strategy_names", "trainable_stage_names", "validate_options",
]
