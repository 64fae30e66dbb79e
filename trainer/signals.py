"""Turn SIGTERM/SIGINT (Kaggle and Colab cut sessions off) and SIGUSR1 (a sweep's early stop) into flags.

The loop polls the flag after each step, so the current step finishes, a checkpoint is written, and the
run exits in a state the sweep understands: preempted (re-queued, resumes later) or early-stopped (done).
A second SIGINT aborts at once, as users expect from Ctrl-C pressed twice.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass

PREEMPT = "preempt"
EARLY_STOP = "early_stop"
# The sweep driver's early stop; Windows has no SIGUSR1, and there hyperband lets trials run to their end.
EARLY_STOP_SIGNAL = getattr(signal, "SIGUSR1", None)
# `wandb agent` sends SIGKILL 30 s after its SIGTERM (wandb/wandb_agent.py: Agent.KILL_DELAY, WANDB_AGENT_KILL_DELAY),
# and Kaggle and Colab give a session about as long. A stopped run's checkpoint uploads get what is left of this
# much after the signal, so W&B's own finish fits in the rest; an upload not done by then is left behind (the run
# folder keeps the checkpoint, and a resumed run uploads its next one).
UPLOADS_AFTER_SIGNAL_SECONDS = 20.0


@dataclass
class StopFlag:
    reason: str | None = None
    signum: int | None = None
    requested_at: float | None = None  # time.monotonic() of the first request

    def request(self, reason: str, signum: int | None = None) -> None:
        if self.reason is None:
            self.reason, self.signum, self.requested_at = reason, signum, time.monotonic()

    def seconds_left(self, budget: float) -> float:
        """What is left of `budget` seconds counted from the request (all of it before one)."""
        if self.requested_at is None:
            return budget
        return max(0.0, budget - (time.monotonic() - self.requested_at))

    def __bool__(self) -> bool:
        return self.reason is not None


class GracefulStop:
    """Context manager that installs the handlers and restores the previous ones on exit."""

    def __init__(self):
        self.flag = StopFlag()
        self._previous: dict[int, object] = {}

    def _on_preempt(self, signum, frame):
        if signum == signal.SIGINT and self.flag.reason == PREEMPT:
            raise KeyboardInterrupt  # the second Ctrl-C
        self.flag.request(PREEMPT, signum)

    def _on_early_stop(self, signum, frame):
        self.flag.request(EARLY_STOP, signum)

    def __enter__(self) -> StopFlag:
        handlers = {signal.SIGTERM: self._on_preempt, signal.SIGINT: self._on_preempt,
                    EARLY_STOP_SIGNAL: self._on_early_stop}
        for signum, handler in handlers.items():
            if signum is None:
                continue
            try:
                self._previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread (e.g. a test harness): no handlers, the flag still works
                pass
        return self.flag

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
