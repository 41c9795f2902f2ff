"""Command line: one subcommand per Snakemake rule.

Each package registers its subcommands in its ``commands.py`` through ``register(subparsers)``.
Registration imports nothing heavy (no torch), so ``--help`` and light rules start fast; each handler
imports what it needs when it runs.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import shlex
import sys

from projection_probe.io import InputError

log = logging.getLogger("projection_probe.cli")

COMMAND_MODULES = [
    "projection_probe.data.commands",
    "projection_probe.models.commands",
    "projection_probe.train.commands",
    "projection_probe.evaluate.commands",
    "projection_probe.features.commands",
    "projection_probe.probes.commands",
    "projection_probe.baselines.commands",
    "projection_probe.report.commands",
    "projection_probe.analysis.commands",
    "projection_probe.plan.commands",
]


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch and the BLAS pools (0: the libraries' default)")


def set_threads(n: int | None) -> None:
    """Limit torch and the BLAS pools (numpy, scikit-learn) to `n` CPU threads; None or 0 leaves the
    libraries' defaults."""
    if n is None or n == 0:
        return
    if n < 0:
        raise InputError(f"--threads {n}: must be at least 1 (0: the libraries' default)")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


def parse_json_arg(flag: str, text: str):
    """A command-line argument holding JSON, or an InputError that names the flag."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{flag}: not valid JSON ({e}): {text[:200]!r}") from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="projection-probe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    # The whole command line goes into the job's log: the operational settings (batch sizes, workers,
    # threads, checkpoint interval), which are not rule params, are recorded there.
    log.info("projection-probe %s", shlex.join(str(a) for a in argv))
    try:
        result = args.handler(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
