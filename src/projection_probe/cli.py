"""Command line: one subcommand per Snakemake rule.

Each package registers its subcommands in its ``commands.py`` through ``register(subparsers)``.
Registration imports nothing heavy (no torch), so ``--help`` and light rules start fast; each handler
imports what it needs when it runs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from projection_probe.io import InputError

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="projection-probe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a stage not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
