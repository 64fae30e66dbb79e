#!/usr/bin/env python
"""finetune-sweeps command line.

  python agent.py [run] [--key=value ...] [--config FILE]   one training run (what `wandb agent` launches)
  python agent.py sweep SWEEP.yaml --count N [--workers N] [--sweep_dir DIR] [--key=value ...]
                                                             an offline sweep with W&B's own engine, no server
  python agent.py check SWEEP.yaml [--key=value ...]        the sweep's checks, nothing run (before `wandb sweep`)
  python agent.py report SOURCE [--out DIR]                  report of a sweep folder or entity/project/sweep_id
  python agent.py test RUN_FOLDER [--data_dir=...]           the held-out test set, once, for a chosen run
  python agent.py models [NAME ...]                          stages and trainable parameters per strategy

A user's mistake ends with one line `error: ...` and exit status 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from common.disk import disk_problem
from common.errors import EXIT_USER_ERROR, UserError
from common.parsing import nearest

COMMANDS = ("run", "sweep", "check", "report", "test", "models")
WRITE_HINTS = {
    "report": "pass --out DIR with a folder you can write to",
    "sweep": "pass --sweep_dir (and --cache_dir) with folders you can write to",
    "run": "pass --output_dir (and --cache_dir) with folders you can write to",
}


def _split_option(args: list[str], name: str, default: str | None = None) -> tuple[str | None, list[str]]:
    """Take `--name=value` / `--name value` out of args (options of a sub-command, not run parameters)."""
    rest, value, i = [], default, 0
    spellings = {f"--{name}", f"--{name.replace('_', '-')}"}
    while i < len(args):
        arg = args[i]
        if arg in spellings:
            if i + 1 >= len(args):
                raise UserError(f"{arg} needs a value: {arg} VALUE or {arg}=VALUE")
            value, i = args[i + 1], i + 2
            continue
        if arg.split("=", 1)[0] in spellings and "=" in arg:
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def run_config_from_args(args: list[str]):
    """Defaults < the saved config of a resumed run < --config FILE < --key=value arguments: what this command
    passes wins (a new machine's data_dir), and the run's saved values fill in the rest."""
    from trainer.config import load_yaml_values, parse_cli, parse_run_config, unused_reason

    config_file, args = _split_option(args, "config")
    cli = parse_cli(args)
    sources = [load_yaml_values(config_file)] if config_file else []
    probe = parse_run_config(*sources, cli)
    if probe.resume:
        from trainer.record import RunRecord
        from trainer.run import resolve_run_id
        from trainer.store import stored_config

        run_id = resolve_run_id(probe)
        # A mistyped run id creates no folder. On a new machine only the --checkpoint_store folder has the run.
        saved = RunRecord.saved_config(Path(probe.output_dir).expanduser() / run_id) or stored_config(probe.checkpoint_store, run_id) or {}
        saved.pop("run_id", None)
        sources = [saved, *sources]
        cli = {**cli, "run_id": run_id}
    config = parse_run_config(*sources, cli)
    ignored = [f"--{key} ({unused_reason(key, config)})" for key, value in cli.items() if value is not None and getattr(config, key, None) is None]
    if ignored:  # normalisation drops what this run cannot use: say so, rather than let it look used
        print(f"note: ignored, as this run has no use for them: {', '.join(ignored)}", flush=True)
    asked = cli.get("warmup_epochs")
    if asked and config.warmup_epochs is not None and config.warmup_epochs < _number(asked):
        print(f"note: --warmup_epochs={asked} is more than half of {config.epochs} epochs; warming up over "
              f"{config.warmup_epochs:g} instead, so the run trains at its lr", flush=True)
    return config


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def command_run(args: list[str]) -> int:
    from trainer.config import help_text

    if "--help" in args or "-h" in args:
        print(__doc__.strip() + "\n\nRun parameters (--key=value or --key value; strings like 'false' or 'no' work):" + help_text())
        return 0
    from trainer.run import run_training  # torch: only once there is a run to train

    return run_training(run_config_from_args(args)).exit_code


SWEEP_USAGE = ("usage: python agent.py sweep SWEEP.yaml --count N [--workers N] [--sweep_dir DIR] [--key=value ...]\n"
               "  --count N      the sweep's size: trials in its folder in all (the same command again finishes it)\n"
               "  --workers N    trials at once (one GPU each when there are several)\n"
               "  --sweep_dir    the sweep folder (default sweep_runs/<yaml name>)\n"
               "  --key=value    fixes a run parameter for every trial (`python agent.py --help` lists them)")
SWEEP_OPTIONS = ("count", "workers", "sweep_dir")
USAGES = {
    "sweep": SWEEP_USAGE,
    "report": "usage: python agent.py report SOURCE [--out DIR]\n  SOURCE: a sweep folder, a runs/ folder, or entity/project/sweep_id;"
              " writes report.md, plots and runs.csv (default SOURCE/report)",
    "test": "usage: python agent.py test RUN_FOLDER [--data_dir=DIR] [--device=auto]\n  evaluates the run's best.pt on the held-out"
            " test set (val/ of nature_12K, or test/) and writes RUN_FOLDER/test/",
    "models": "usage: python agent.py models [NAME ...]\n  the registered backbones, their stages and trainable parameters per strategy",
    "check": "usage: python agent.py check SWEEP.yaml [--key=value ...]\n  the checks a local sweep makes of its YAML (parameter"
             " names and values, metric and goal, values no trial could train with), with nothing run: do it before"
             " `wandb sweep`, whose server checks none of them",
}


def _integer(name: str, value: str | None) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"--{name}={value} must be an integer") from None


def command_sweep(args: list[str]) -> int:
    from common.parsing import nearest
    from trainer.config import FIELDS, parse_cli

    try:
        from sweeper.local import run_local_sweep
    except ImportError as exc:  # installed without the sweep engine (plain `pip install wandb`)
        raise UserError(f"the sweep command needs the {exc.name!r} package: pip install \"wandb[sweeps]\" (or pip install -e .)") from None

    count, args = _split_option(args, "count")
    workers, args = _split_option(args, "workers", "1")
    sweep_dir, args = _split_option(args, "sweep_dir")
    if not args or args[0].startswith("--"):
        raise UserError(SWEEP_USAGE.splitlines()[0])
    for arg in args[1:]:  # a mistyped sweep option is named as one, not as an unknown run parameter
        key = arg[2:].split("=", 1)[0].replace("-", "_") if arg.startswith("--") else None
        hint = nearest(key, (*SWEEP_OPTIONS, *FIELDS)) if key and key not in FIELDS else ""
        if any(hint == f" (did you mean {option!r}?)" for option in SWEEP_OPTIONS):
            raise UserError(f"unknown option --{key}{hint}; {SWEEP_USAGE.splitlines()[0]}")
    if count is None:
        raise UserError("--count N is required: the sweep's size, its trials in all (run the same command again to finish it)")
    count_value, worker_value = _integer("count", count), _integer("workers", workers)
    summary = run_local_sweep(Path(args[0]), count=count_value, workers=worker_value, sweep_dir=Path(sweep_dir) if sweep_dir else None, fixed=parse_cli(args[1:]))
    return 0 if summary is not None else 130  # None: the sweep was interrupted; rerun the command to continue


def command_check(args: list[str]) -> int:
    from trainer.config import parse_cli

    try:
        from sweeper.local import check_sweep
    except ImportError as exc:
        raise UserError(f"the check command needs the {exc.name!r} package: pip install \"wandb[sweeps]\" (or pip install -e .)") from None
    if not args or args[0].startswith("--"):
        raise UserError(USAGES["check"].splitlines()[0])
    print(check_sweep(Path(args[0]), parse_cli(args[1:])))
    return 0


def command_report(args: list[str]) -> int:
    from report.build import build_report

    out, args = _split_option(args, "out")
    if len(args) != 1:
        raise UserError(USAGES["report"].replace("\n ", ";"))
    source = args[0]
    if Path(source).is_file():  # a sweep's YAML is its definition; its results are in its sweep folder
        hint = f"pass its sweep folder, sweep_runs/{Path(source).stem} by default" if Path(source).suffix in (".yaml", ".yml") else \
            "pass a sweep folder, a runs/ folder, or entity/project/sweep_id"
        raise UserError(f"report source {source} is a file, not a folder: {hint}")
    out_dir = Path(out) if out else (Path(source) / "report" if Path(source).exists() else Path("reports") / source.replace("/", "_"))
    path = build_report(source, out_dir)
    print(f"report written to {path}")
    return 0


def command_test(args: list[str]) -> int:
    from trainer.evaluate import evaluate_on_test_set

    data_dir, args = _split_option(args, "data_dir")
    device, args = _split_option(args, "device", "auto")
    if len(args) != 1:
        raise UserError(USAGES["test"].splitlines()[0])
    result = evaluate_on_test_set(Path(args[0]), data_dir=data_dir, device=device)
    print(f"test accuracy {result['test_acc']:.4f} on {result['num_images']} held-out images -> {Path(args[0]) / 'test'}")
    return 0


def command_models(args: list[str]) -> int:
    from models import describe_models

    print(describe_models(args or None))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-") and nearest(argv[0], COMMANDS):
        print(f"error: unknown command {argv[0]!r}{nearest(argv[0], COMMANDS)}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USER_ERROR
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    handlers = {"run": command_run, "sweep": command_sweep, "check": command_check, "report": command_report,
                "test": command_test, "models": command_models}
    if command in USAGES and ("--help" in argv or "-h" in argv):
        print(USAGES[command])
        return 0
    try:
        return handlers[command](argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # a read-only or full disk met outside a run (which records its own)
        problem = disk_problem(exc, WRITE_HINTS.get(command, "choose a folder you can write to"), permissions=True)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
