"""Whether a person watches this process's output as it comes: what decides if progress bars are drawn."""

from __future__ import annotations

import sys


def live_output() -> bool:
    """A terminal, or a notebook kernel (Colab, Kaggle), where tqdm.auto draws a widget though stderr is no terminal.
    A sweep trial writing to its log file is neither: it prints one line per epoch instead."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules
