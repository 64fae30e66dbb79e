"""What a run shows while it trains: its first lines (device, precision, model, size, parameters), and a progress
bar per epoch on a terminal; nothing per step otherwise (the loop prints one line per epoch)."""

from __future__ import annotations

from common.terminal import live_output

CPU_WARNING = "warning: CPU: no GPU found"
GPU_HINT = "on Colab: Runtime > Change runtime type > GPU; on Kaggle: Settings > Accelerator"


def precision_name(dtype) -> str:
    """The autocast dtype as a person reads it; None is fp32."""
    names = {"torch.bfloat16": "bf16", "torch.float16": "fp16 with a grad scaler"}
    return names.get(str(dtype), "fp32") if dtype is not None else "fp32"


def run_header(requested_device: str, device, dtype, model: str, weights: str, crop_size: int, trainable: int,
               total: int) -> str:
    """A run's first lines: where it trains and at what precision (a warning when `auto` found no GPU, the mistake of
    a notebook whose GPU runtime was forgotten), then the model, its input size and what share of it trains (a
    warning when stages stay frozen at random init)."""
    precision = precision_name(dtype)
    if device.type == "cuda":
        import torch

        where = f"device: {device} ({torch.cuda.get_device_name(device)}), precision {precision}"
    elif requested_device == "auto":
        where = (f"{CPU_WARNING}; training on the CPU in {precision}, which is slow for anything but tiny models "
                 f"({GPU_HINT})")
    else:
        where = f"device: {device}, precision {precision}"
    lines = [
        where, f"model: {model} (weights {weights}) at {crop_size} px: {trainable:,} of {total:,} parameters trainable"]
    # frozen stages of random init: features of nothing, accuracy near chance
    if weights == "none" and trainable < total:
        lines.append("warning: frozen stages at random init (--weights=none): this trains a head on random features "
                     "and ends near chance; use --strategy=full to train them, or ImageNet weights")
    return "\n".join(lines)

POSTFIX_EVERY_STEPS = 20  # reading the loss value syncs the GPU; do it rarely
# Lines of a trial's output that a local sweep shows on its own console, named by the trial (sweeper/local.py).
FORWARDED = ("epoch ", "warning:")



class EpochProgress:
    def __init__(self, description: str, total: int, initial: int = 0, enabled: bool | None = None):
        self.bar = None
        if enabled if enabled is not None else live_output():
            from tqdm.auto import tqdm  # a widget in a notebook, a text bar on a terminal

            self.bar = tqdm(total=total, initial=initial, desc=description, leave=False, dynamic_ncols=True)
        self.steps = 0

    def update(self, loss=None, lr: float | None = None) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        self.steps += 1
        if loss is not None and self.steps % POSTFIX_EVERY_STEPS == 1:
            value = loss.detach() if hasattr(loss, "detach") else loss  # the step's loss still holds its graph
            self.bar.set_postfix(loss=f"{float(value):.4f}", lr=f"{lr:.2e}" if lr else None)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
