"""A progress bar per epoch on a terminal; nothing per step otherwise (the loop prints one line per epoch)."""

from __future__ import annotations

import sys

POSTFIX_EVERY_STEPS = 20  # reading the loss value syncs the GPU; do it rarely


class EpochProgress:
    def __init__(self, description: str, total: int, initial: int = 0, enabled: bool | None = None):
        self.bar = None
        if enabled if enabled is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=description, leave=False, dynamic_ncols=True)
        self.steps = 0

    def update(self, loss=None, lr: float | None = None) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        self.steps += 1
        if loss is not None and self.steps % POSTFIX_EVERY_STEPS == 1:
            self.bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{lr:.2e}" if lr else None)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
