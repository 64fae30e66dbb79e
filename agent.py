#!/usr/bin/env python
"""finetune-sweeps command line.

  python agent.py [run] [--key=value ...] [--config FILE]   one training run (what `wandb agent` launches)
  python agent.py sweep SWEEP.yaml --count N [--workers N] [--sweep_dir DIR] [--key=value ...]
                                                             an offline sweep with W&B's own engine, no server
  python agent.py check SWEEP.yaml [--key=value ...]        the sweep's checks, nothing run (before `wandb sweep`)
  python agent.py report SOURCE [--out DIR]                  report of a sweep folder or entity/project/sweep_id
  python agent.py test RUN_FOLDER [--data_dir=...]           the held-out test set, once, for a chosen run
  python agent.py models [NAME ...]                          stages and trainable parameters per strategy
  python agent.py protocol STAGE [PROTOCOL.yaml] [...]       the fair protocol: tune, recipes, compare, test, curve, wandb

A user's mistake ends with one line `error: ...` and exit status 2, never a traceback.
"""  # noqa: E501  (the usage table: one command a line, as --help prints it)

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from common.disk import disk_problem
from common.errors import EXIT_USER_ERROR, UserError
from common.parsing import nearest

COMMANDS = ("run", "sweep", "check", "report", "test", "models", "protocol")
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
    from trainer.config import (
        FREEZE_OPTION_FIELDS,
        load_yaml_values,
        parse_cli,
        parse_run_config,
        parse_run_config_explained,
    )

    config_file, args = _split_option(args, "config")
    cli = parse_cli(args)
    sources = [load_yaml_values(config_file)] if config_file else []
    probe = parse_run_config(*sources, cli)
    if probe.resume:
        from trainer.record import LAST_CHECKPOINT, RunRecord
        from trainer.run import resolve_run_id
        from trainer.store import checkpoint_config, stored_config

        run_id = resolve_run_id(probe)
        folder = Path(probe.output_dir).expanduser() / run_id
        # A mistyped run id creates no folder. On a new machine only the --checkpoint_store folder has the run; a
        # config.yaml deleted as damaged leaves the settings inside last.pt.
        saved = (RunRecord.saved_config(folder) or stored_config(probe.checkpoint_store, run_id)
                 or checkpoint_config(folder / LAST_CHECKPOINT) or {})
        saved.pop("run_id", None)
        sources = [saved, *sources]
        cli = {**cli, "run_id": run_id}
    config, dropped = parse_run_config_explained(*sources, cli)
    folded = _folded_strategy(cli, config)
    if folded:
        print(f"note: {folded}", flush=True)
    ignored = [f"--{key} ({dropped[key]})" for key, value in cli.items()
               if value is not None and key in dropped and not (folded and key in FREEZE_OPTION_FIELDS)]
    if ignored:  # normalisation drops what this run cannot use: say so, rather than let it look used
        print(f"note: ignored, as this run has no use for them: {', '.join(ignored)}", flush=True)
    given = {**(sources[-1] if config_file else {}), **cli}
    if (config.aux_loss_weight == 0 and given.get("aux_loss_weight") in (None, "")
            and _aux_needs(config.model) > config.input_size):
        print(f"note: {config.model}'s auxiliary classifier needs >={_aux_needs(config.model)} px; at "
              f"input_size={config.input_size} it trains without it (aux_loss_weight=0)", flush=True)
    asked = cli.get("warmup_epochs")
    if asked and config.warmup_epochs is not None and config.warmup_epochs < _number(asked):
        print(f"note: --warmup_epochs={asked} is more than half of {config.epochs} epochs; warming up over "
              f"{config.warmup_epochs:g} instead, so the run trains at its lr", flush=True)
    return config


def _folded_strategy(cli: dict, config) -> str | None:
    """The strategy asked for on the command line, when it trains what another, simpler one does (fraction as last_k):
    the run records that one, so equivalent runs are one config."""
    from models.freezing import resolve_strategy

    asked = cli.get("strategy")
    if not asked or config.model == "scratch_cnn" or resolve_strategy(asked).name == config.strategy:
        return None
    options = ", ".join(f"{key}={cli[key]}" for key in ("k_layers", "freeze_fraction", "unfreeze_every_epochs")
                        if cli.get(key))
    recorded = f"{config.strategy}{f' k_layers={config.k_layers}' if config.k_layers is not None else ''}"
    return (f"--strategy={asked}{f' ({options})' if options else ''} trains exactly what strategy={recorded} trains on "
            f"{config.model} over {config.epochs} epochs: recorded as that, so equivalent runs count as one config")


def _aux_needs(model: str) -> int:
    from models.registry import get_spec

    return get_spec(model).aux_min_input_size


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def command_run(args: list[str]) -> int:
    from trainer.config import help_text

    if "--help" in args or "-h" in args:
        print(__doc__.strip() + "\n\nRun parameters (--key=value or --key value; strings like 'false' or 'no' work):"
              + help_text())
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
    "report": "usage: python agent.py report SOURCE [--out DIR] [--allow_lost_seeds]\n"
              "  SOURCE: a sweep folder, a runs/ folder, a protocol folder (sweep_runs/protocol), or "
              "entity/project/sweep_id; writes report.md, plots and runs.csv (default SOURCE/report). "
              "--allow_lost_seeds lets a config that lost seeds be the best over seeds (named either way)",
    "test": "usage: python agent.py test RUN_FOLDER [--data_dir=DIR] [--device=auto]\n"
            "  evaluates the run's best.pt on the held-out test set (val/ of nature_12K, or test/) and writes "
            "RUN_FOLDER/test/",
    "models": "usage: python agent.py models [NAME ...]\n"
              "  the registered backbones, their stages and trainable parameters per strategy",
    "protocol": ("usage: python agent.py protocol STAGE [PROTOCOL.yaml] [--protocol_dir DIR] [--workers N] "
                 "[--key=value ...]\n"
                 "  STAGE: tune (every arm's tuning sweep, the same number of trials each), recipes (each arm's winner "
                 "-> sweeps/compare/<arm>.yaml; --wandb reads the W&B tuning sweeps), compare (the recipes on fresh "
                 "seeds and split seeds), test (the held-out test set, once per final run), curve (the data-efficiency "
                 "curve), wandb (create the tuning sweeps on W&B: --project, --entity)\n"
                 "  PROTOCOL.yaml: default sweeps/protocol.yaml; runs go to sweep_runs/<its name>/ "
                 "(or --protocol_dir)"),
    "check": "usage: python agent.py check SWEEP.yaml [--key=value ...]\n"
             "  the checks a local sweep makes of its YAML (parameter names and values, metric and goal, values no "
             "trial could train with), with nothing run: do it before `wandb sweep`, whose server checks none of them",
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
        raise UserError(f"the sweep command needs the {exc.name!r} package: pip "
                        "install \"wandb[sweeps]\" (or pip install -e .)") from None

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
        raise UserError(
            "--count N is required: the sweep's size, its trials in all (run the same command again to finish it)")
    count_value, worker_value = _integer("count", count), _integer("workers", workers)
    fixed = parse_cli(args[1:])
    from sweeper.protocol import check_stage_sweep

    check_stage_sweep(Path(args[0]), fixed)  # a protocol's compare or curve sweep run as a plain one: its refusals
    summary = run_local_sweep(Path(args[0]), count=count_value, workers=worker_value,
                              sweep_dir=Path(sweep_dir) if sweep_dir else None, fixed=fixed)
    return 0 if summary is not None else 130  # None: the sweep was interrupted; rerun the command to continue


def command_check(args: list[str]) -> int:
    from trainer.config import parse_cli

    try:
        from sweeper.local import check_sweep
    except ImportError as exc:
        raise UserError(f"the check command needs the {exc.name!r} package: pip "
                        "install \"wandb[sweeps]\" (or pip install -e .)") from None
    if not args or args[0].startswith("--"):
        raise UserError(USAGES["check"].splitlines()[0])
    print(check_sweep(Path(args[0]), parse_cli(args[1:])))
    return 0


def command_report(args: list[str]) -> int:
    from report.build import build_report

    out, args = _split_option(args, "out")
    allow_lost_seeds = "--allow_lost_seeds" in args  # a config that lost seeds may still be the best over seeds
    args = [arg for arg in args if arg != "--allow_lost_seeds"]
    if len(args) != 1:
        raise UserError(USAGES["report"].replace("\n ", ";"))
    source = args[0]
    if Path(source).is_file():  # a sweep's YAML is its definition; its results are in its sweep folder
        hint = (f"pass its sweep folder, sweep_runs/{Path(source).stem} by default"
                if Path(source).suffix in (".yaml", ".yml")
                else "pass a sweep folder, a runs/ folder, or entity/project/sweep_id")
        raise UserError(f"report source {source} is a file, not a folder: {hint}")
    out_dir = Path(out) if out else (Path(source) / "report" if Path(source).exists()
                                     else Path("reports") / source.replace("/", "_"))
    path = build_report(source, out_dir, allow_lost_seeds=allow_lost_seeds)
    print(f"report written to {path}")
    return 0


def command_test(args: list[str]) -> int:
    from trainer.evaluate import evaluate_on_test_set

    data_dir, args = _split_option(args, "data_dir")
    device, args = _split_option(args, "device", "auto")
    if len(args) != 1:
        raise UserError(USAGES["test"].splitlines()[0])
    result = evaluate_on_test_set(Path(args[0]), data_dir=data_dir, device=device)
    print(
        f"test accuracy {result['test_acc']:.4f} on {result['num_images']} held-out images -> {Path(args[0]) / 'test'}")
    return 0


def command_protocol(args: list[str]) -> int:
    from common.parsing import nearest
    from sweeper import protocol as P
    from trainer.config import parse_cli

    protocol_dir, args = _split_option(args, "protocol_dir")
    workers, args = _split_option(args, "workers", "1")
    project, args = _split_option(args, "project", "finetune-sweeps")
    entity, args = _split_option(args, "entity")
    from_wandb = "--wandb" in args
    args = [arg for arg in args if arg != "--wandb"]
    if not args or args[0] not in P.STAGES:
        stage = args[0] if args else ""
        raise UserError("protocol needs a "
                        f"stage{f', not {stage!r}' if stage else ''}{nearest(stage, P.STAGES) if stage else ''}: "
                        f"{', '.join(P.STAGES)}; {USAGES['protocol'].splitlines()[0]}")
    stage, args = args[0], args[1:]
    path = args.pop(0) if args and not args[0].startswith("--") else P.PROTOCOL_FILE
    protocol = P.load_protocol(path)
    fixed = parse_cli(args)
    folder = Path(protocol_dir) if protocol_dir else None
    if stage == "tune":
        return 0 if P.run_tune(protocol, folder, _integer("workers", workers), fixed) else 130
    if stage == "recipes":
        P.write_recipes(protocol, folder, wandb=from_wandb)
    elif stage in ("compare", "curve"):
        return 0 if P.run_final(protocol, stage, folder, _integer("workers", workers), fixed) else 130
    elif stage == "test":
        P.run_tests(protocol, folder, fixed.get("data_dir"), fixed.get("device", "auto"))
    else:
        P.create_wandb_sweeps(protocol, folder, fixed, project, entity)
    return 0


def command_models(args: list[str]) -> int:
    from models import describe_models

    print(describe_models(args or None))
    return 0


def _say_error(problem: Exception) -> None:
    try:
        print(f"error: {problem}", file=sys.stderr, flush=True)
    except OSError:  # stderr is a log on the disk that just filled up: the exit status still says it
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # a name that is not UTF-8 prints escaped, never as a UnicodeEncodeError
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-") and nearest(argv[0], COMMANDS):
        print(f"error: unknown command {argv[0]!r}{nearest(argv[0], COMMANDS)}; commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return EXIT_USER_ERROR
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    handlers = {"run": command_run, "sweep": command_sweep, "check": command_check, "report": command_report,
                "test": command_test, "models": command_models, "protocol": command_protocol}
    if command in USAGES and ("--help" in argv or "-h" in argv):
        print(USAGES[command])
        return 0
    try:
        return handlers[command](argv)
    except UserError as exc:
        _say_error(exc)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `agent.py --help | head`: the reader has all it wanted; no traceback at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a read-only or full disk, wherever it struck (a run records its own first)
        problem = disk_problem(exc, WRITE_HINTS.get(command, "choose a folder you can write to"), permissions=True)
        if problem is None:
            raise
        _say_error(problem)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
