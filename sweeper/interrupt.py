"""The driver's own SIGTERM/SIGINT handling: stop launching, pass the stop on to the trials, let them checkpoint.

Kaggle and Colab end a session with SIGTERM; the trials then save their state and exit as `preempted`, and
the next call of the same sweep resumes them. A second Ctrl-C aborts at once, as users expect.
"""

from __future__ import annotations

import signal
from collections.abc import Callable


class DriverInterrupt:
    """Context manager; truthy once SIGTERM or SIGINT arrived. `on_interrupt(signum)` runs on the first one."""

    def __init__(self, on_interrupt: Callable[[int], None]):
        self.on_interrupt = on_interrupt
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl-C
            return
        self.signum = signum
        self.on_interrupt(signum)

    def __bool__(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> DriverInterrupt:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: no handlers, the sweep still runs
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
