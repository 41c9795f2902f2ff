"""CLI: plan (the resources of a config's sweep, from the config alone)."""
from __future__ import annotations

from pathlib import Path

from projection_probe.io import InputError


def run_plan(args) -> int:
    from projection_probe.plan.estimate import build_plan, load_config, planned_models, render

    if args.gpu_memory_gb is not None and args.gpu_memory_gb <= 0:
        raise InputError(f"--gpu-memory-gb {args.gpu_memory_gb}: must be positive")
    config = load_config(args.configfile)
    names = args.model or planned_models(config)
    any_too_big = False
    for name in names:  # one plan per checkpoint model, each under its name when there are several
        plan = build_plan(config, results=args.results, config_dir=Path(args.directory), model_name=name)
        text, too_big = render(plan, args.gpu_memory_gb)
        print(f"## {name}\n\n{text}\n" if len(names) > 1 else text)
        any_too_big = any_too_big or bool(too_big)
    return 1 if any_too_big else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="parameters, optimizer state, peak GPU memory and disk of a config's sweep",
                              description="Reads the config, the model's config.json and the manifests where they "
                                          "exist (otherwise states its assumptions); runs nothing. Exit status 1 "
                                          "when --gpu-memory-gb is given and a job does not fit.")
    p.add_argument("--configfile", nargs="+", default=["config/config.yaml"],
                   help="config files, merged in order as Snakemake does")
    p.add_argument("--gpu-memory-gb", type=float, default=None,
                   help="memory per GPU (e.g. 80); every job that needs more is named")
    p.add_argument("--model", nargs="+", default=None,
                   help="the models (names under `models:`) to size; default: every llava_hf and family model")
    p.add_argument("--results", default="results", help="the workflow's results folder (for the manifests)")
    p.add_argument("--directory", default=".", help="where relative paths of the config are read from")
    p.set_defaults(handler=run_plan)
