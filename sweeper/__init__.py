"""Local, offline W&B sweeps: W&B's own engine suggests configs and early stops, `agent.py` trains each trial.

    definition.py  the sweep YAML: checked against the run config, pinned to its sweep folder
    table.py       table.jsonl, the sweep's trials across calls
    recover.py     trials whose row table.jsonl lost, read back from their run folders
    engine.py      the seam to the `sweeps` engine (suggestions, hyperband decisions)
    trial.py       one trial as an `agent.py` subprocess, and how it ended
    interrupt.py   SIGTERM/SIGINT of the driver, passed on to its trials
    console.py     progress lines and the final table
    local.py       the driver loop: run_local_sweep
"""

from sweeper.local import run_local_sweep

__all__ = ["run_local_sweep"]
