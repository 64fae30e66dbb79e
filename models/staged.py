"""StagedModel: a backbone run as its ordered named stages, with a train plan that freezes whole stages.

Freezing is enforced here, in one place: `apply_plan` sets `requires_grad` from the plan, and `train()` puts
every frozen stage back in eval mode after each call, so frozen BatchNorm statistics cannot drift (pitfall 1).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from models.freezing import HEAD, TrainPlan
from models.registry import AuxHead, BackboneSpec

NORM_LAYERS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)
BN_MODES = ("freeze", "adapt")


def _resolve(net: nn.Module, path: str) -> nn.Module | nn.Parameter:
    """The submodule, or the bare parameter (ViT's class_token), at a dotted path."""
    try:
        return net.get_submodule(path)
    except AttributeError:
        return net.get_parameter(path)


class StagedModel(nn.Module):
    """Wraps a torchvision (or scratch) net registered as `self.net`; state_dict keys are `net.<net key>`.

    Built by `models.build_model`, with every stage trainable until `apply_plan` says otherwise.
    `bn_mode="adapt"` lets the BatchNorm layers of frozen stages update their running statistics (their
    affine parameters stay frozen); "freeze" keeps frozen stages entirely in eval mode.
    """

    def __init__(self, spec: BackboneSpec, net: nn.Module, num_classes: int, weights_version: str,
                 aux_loss_weight: float, bn_mode: str = "freeze", weights_sha256: str | None = None,
                 weights_file: str | None = None):
        super().__init__()
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        self.net = net
        self.spec = spec
        self.num_classes = num_classes
        self.weights_version = weights_version
        self.weights_sha256 = weights_sha256  # of the file it started from, where one was given by path
        self.weights_file = weights_file  # torchvision's own file of its ImageNet weights, where given by path
        self.aux_loss_weight = float(aux_loss_weight)
        self.bn_mode = bn_mode
        self._index = {name: i for i, name in enumerate(spec.stage_names)}
        self.plan = TrainPlan(frozenset(spec.stage_names))
        self.apply_plan(self.plan)

    # ---- structure -------------------------------------------------------------------------------

    @property
    def stage_names(self) -> tuple[str, ...]:
        return self.spec.stage_names

    def _stage(self, name: str):
        try:
            return self.spec.stages[self._index[name]]
        except KeyError:
            raise ValueError(f"{self.spec.name} has no stage {name!r}; stages: {self.stage_names}") from None

    def _owned_parameters(self, paths) -> list[tuple[str, nn.Parameter]]:
        params = []
        for path in paths:
            target = _resolve(self.net, path)
            if isinstance(target, nn.Parameter):
                params.append((f"net.{path}", target))
            else:
                params.extend(target.named_parameters(prefix=f"net.{path}"))
        return params

    def stage_parameters(self, name: str) -> list[tuple[str, nn.Parameter]]:
        """(qualified name, parameter) of a stage; the head stage includes the aux heads' parameters."""
        params = self._owned_parameters(self._stage(name).modules)
        if name == HEAD:
            params += self._owned_parameters(aux.module for aux in self.spec.aux_heads)
        return params

    def stage_modules(self, name: str) -> list[nn.Module]:
        """The modules a stage owns (bare parameters left out); the head stage includes the aux heads."""
        paths = list(self._stage(name).modules)
        if name == HEAD:
            paths += [aux.module for aux in self.spec.aux_heads]
        return [m for m in (_resolve(self.net, p) for p in paths) if isinstance(m, nn.Module)]

    def stage_state_keys(self, names) -> list[str]:
        """state_dict keys (parameters and buffers) of these stages; the head's aux heads are not included."""
        prefixes = [f"net.{path}" for name in names for path in self._stage(name).modules]
        return [key for key in self.state_dict() if any(key == p or key.startswith(p + ".") for p in prefixes)]

    def aux_parameters(self, aux: AuxHead) -> list[tuple[str, nn.Parameter]]:
        return self._owned_parameters([aux.module])

    # ---- plan and modes --------------------------------------------------------------------------

    def active_aux_heads(self) -> tuple[AuxHead, ...]:
        """Aux heads that train and run: weight > 0, and both the stage feeding them and the head train."""
        trainable = self.plan.trainable_stages
        if self.aux_loss_weight <= 0 or HEAD not in trainable:
            return ()
        return tuple(aux for aux in self.spec.aux_heads if aux.after_stage in trainable)

    def apply_plan(self, plan: TrainPlan) -> None:
        """Set `requires_grad` on every parameter exactly per the plan, then re-apply the train/eval modes."""
        unknown = set(plan.trainable_stages) - set(self.stage_names)
        if unknown:
            raise ValueError(f"plan names stages {sorted(unknown)} that {self.spec.name} lacks: {self.stage_names}")
        self.plan = plan
        for stage in self.spec.stages:
            trains = stage.name in plan.trainable_stages
            for _, param in self._owned_parameters(stage.modules):
                param.requires_grad_(trains)
            if plan.train_norm_layers and not trains:
                for module in self._stage_modules_without_aux(stage.name):
                    for norm in module.modules():
                        if isinstance(norm, NORM_LAYERS):
                            for param in norm.parameters(recurse=False):
                                param.requires_grad_(True)
        active = self.active_aux_heads()
        for aux in self.spec.aux_heads:
            for _, param in self.aux_parameters(aux):
                param.requires_grad_(aux in active)
        self.train(self.training)

    def _stage_modules_without_aux(self, name: str) -> list[nn.Module]:
        return [m for m in (_resolve(self.net, p) for p in self._stage(name).modules) if isinstance(m, nn.Module)]

    def _bn_trains_when_frozen(self) -> bool:
        return self.bn_mode == "adapt" or self.plan.train_norm_layers

    def train(self, mode: bool = True) -> StagedModel:
        """Like nn.Module.train, but frozen stages stay in eval mode (BatchNorm statistics fixed, dropout off).

        With bn_mode="adapt" or a plan that trains norm layers, frozen stages' BatchNorm layers alone run in
        train mode. Aux heads that are not active stay in eval mode (they do not run).
        """
        super().train(mode)
        if not mode:
            return self
        trainable = self.plan.trainable_stages
        for stage in self.spec.stages:
            if stage.name in trainable:
                continue
            for module in self._stage_modules_without_aux(stage.name):
                module.eval()
                if self._bn_trains_when_frozen():
                    for bn in module.modules():
                        if isinstance(bn, _BatchNorm):
                            bn.train()
        active = self.active_aux_heads()
        for aux in self.spec.aux_heads:
            if aux not in active:
                self.net.get_submodule(aux.module).eval()
        return self

    def frozen_prefix_depth(self) -> int:
        """How many leading stages give the same output for the same input at every step of this plan.

        Those stages' outputs can be cached; a stage is cacheable when no parameter of it trains and none of
        its BatchNorm layers updates statistics. 0 when the stem trains.
        """
        depth = 0
        for name in self.stage_names:
            if any(p.requires_grad for _, p in self.stage_parameters(name)):
                break
            if self._bn_trains_when_frozen() and any(
                isinstance(m, _BatchNorm) for module in self.stage_modules(name) for m in module.modules()
            ):
                break
            depth += 1
        return depth

    def frozen_depth_over(self, plans) -> int:
        """Leading stages frozen under every plan of a run (gradual unfreezing shrinks the prefix over time): they
        never train, so they can run without autograd, or be computed once. Leaves the last plan applied."""
        depths = []
        for plan in set(plans):
            self.apply_plan(plan)
            depths.append(self.frozen_prefix_depth())
        return min(depths)

    # ---- forward ---------------------------------------------------------------------------------

    def forward(self, x: Tensor, start: int = 0):
        """Run stages[start:] on x (the input image when start=0, else the output of stage start-1).

        In train mode with active aux heads returns (logits, [aux_logits, ...]), else the logits.
        """
        active = self.active_aux_heads() if self.training else ()
        skipped = [aux.module for aux in active if self._index[aux.after_stage] < start]
        if skipped:
            raise ValueError(f"start={start} skips the stage feeding active aux heads {skipped}")
        aux_outputs = []
        for stage in self.spec.stages[start:]:
            x = stage.forward(self.net, x)
            for aux in active:
                if aux.after_stage == stage.name:
                    aux_outputs.append(self.net.get_submodule(aux.module)(x))
        if active:
            return x, aux_outputs
        return x

    def forward_range(self, x: Tensor, start: int, end: int) -> Tensor:
        """Run stages[start:end] only, without aux heads: the trainer's frozen-prefix activation cache."""
        if not 0 <= start <= end <= len(self.spec.stages):
            raise ValueError(f"stage range {start}:{end} outside 0:{len(self.spec.stages)}")
        for stage in self.spec.stages[start:end]:
            x = stage.forward(self.net, x)
        return x

    def extra_repr(self) -> str:
        return (f"backbone={self.spec.name}, num_classes={self.num_classes}, weights={self.weights_version}, "
                f"bn_mode={self.bn_mode}, aux_loss_weight={self.aux_loss_weight}")
