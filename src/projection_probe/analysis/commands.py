"""CLI of the analyses (where in the MLLM the domain knowledge lives).

One subcommand per rule of ``workflow/rules/analysis.smk``:

- ``extract-layer-features``   model → ``layers_{train,test}.safetensors`` (the only step that runs the LLM);
- ``analysis-probe``           layer files + pooled features → ``probes.csv`` (layer-wise, matched, controls);
- ``analysis-similarity``      all settings' test layer files + pooled features → ``similarity.csv``;
- ``analysis-layerwise-report``, ``analysis-matched-report``, ``analysis-selectivity-report``,
  ``analysis-similarity-report``: tables (CSV, MD) and figures (PNG, PDF) from those CSVs;
- ``analysis-claims``          ``all_runs.csv`` → claims table, seed statistics, figure.

Plus ``analysis-recompute`` (no rule): every analysis after extraction, recomputed from the saved
per-layer files and features under a results folder, without Snakemake.
"""
from __future__ import annotations

import argparse
import json
import logging

from projection_probe.cli import add_threads_option, parse_json_arg, set_threads
from projection_probe.hyperparams import ANALYSIS_DEFAULTS
from projection_probe.io import InputError

log = logging.getLogger(__name__)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    """``NAME=PATH`` arguments as an ordered dict."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"{what}: {item!r} must be NAME=PATH")
        name, path = item.split("=", 1)
        out[name] = path
    return out


# ---------------------------------------------------------------- handlers
def run_extract_layers(args) -> None:
    from projection_probe.analysis.layers import extract_layer_features

    set_threads(args.threads)
    extract_layer_features(args.model, args.prompts, args.vision_cache, args.classes, args.out_dir,
                           device=args.device, dtype=args.dtype, storage_dtype=args.storage_dtype,
                           batch_size=args.batch_size, trust_remote_code=args.trust_remote_code)


def probe_one(dataset, setting, seed, classes_path, layers_train=None, layers_test=None, features_train=None,
              features_test=None, linear=None, mlp=None, layer_mlp=False, poolings=None, controls=True,
              device="cpu", matched_mlp=True):
    from projection_probe.analysis.layers import read_layer_file
    from projection_probe.analysis.probing import read_features_file, run_probes
    from projection_probe.probes.commands import read_classes

    n_classes = len(read_classes(classes_path))
    layers = features = None
    if layers_train or layers_test:
        if not (layers_train and layers_test):
            raise InputError("--layers-train and --layers-test go together")
        layers = {"train": read_layer_file(layers_train), "test": read_layer_file(layers_test)}
    if features_train or features_test:
        if not (features_train and features_test):
            raise InputError("--features-train and --features-test go together")
        features = {"train": read_features_file(features_train, n_classes),
                    "test": read_features_file(features_test, n_classes)}
    return run_probes(dataset, setting, seed, n_classes, layers, features, linear, mlp, layer_mlp, poolings,
                      controls, device, matched_mlp)


def run_probe(args) -> None:
    from projection_probe.io import write_csv

    set_threads(args.threads)
    frame = probe_one(args.dataset, args.setting, args.seed, args.classes, args.layers_train, args.layers_test,
                      args.features_train, args.features_test, {"c": args.c, "max_iter": args.max_iter},
                      parse_json_arg("--mlp", args.mlp) if args.mlp else None, args.layer_mlp,
                      args.poolings.split(",") if args.poolings else None, args.controls, args.device,
                      args.matched_mlp)
    write_csv(args.out, frame)


def similarity_one(dataset, seed, layers: dict[str, str], features: dict[str, str], k: int):
    from projection_probe.analysis.layers import read_layer_file
    from projection_probe.analysis.similarity import similarity_rows
    from projection_probe.io import load_safetensors

    layer_sets = {s: read_layer_file(p) for s, p in layers.items()}
    pooled = {}
    for s, p in features.items():
        from safetensors import safe_open

        t = load_safetensors(p, keys=["pre", "post"])
        with safe_open(str(p), framework="pt") as f:
            ids = json.loads((f.metadata() or {}).get("image_paths", "null") or "null")
        if set(t) != {"pre", "post"} or not isinstance(ids, list) or len(ids) != t["pre"].shape[0]:
            raise InputError(f"{p}: needs tensors pre, post and metadata image_paths; rerun extract_features")
        pooled[s] = (t["pre"].float().numpy(), t["post"].float().numpy(), ids)
    return similarity_rows(dataset, seed, layer_sets, pooled, k)


def run_similarity(args) -> None:
    from projection_probe.io import write_csv

    set_threads(args.threads)
    write_csv(args.out, similarity_one(args.dataset, args.seed, _pairs(args.layers, "--layers"),
                                       _pairs(args.features, "--features"), args.knn_k))


def _probes(paths):
    from projection_probe.analysis.reports import read_csvs

    return read_csvs(paths)


def run_layerwise_report(args) -> None:
    from projection_probe.analysis.reports import layerwise_report

    layerwise_report(_probes(args.probes), args.out_csv, args.out_md, args.out_png, args.out_pdf, args.bootstrap,
                     args.confidence)


def run_matched_report(args) -> None:
    from projection_probe.analysis.reports import matched_report

    matched_report(_probes(args.probes), args.out_csv, args.out_md, args.out_png, args.out_pdf, args.bootstrap,
                   args.confidence)


def run_selectivity_report(args) -> None:
    from projection_probe.analysis.reports import selectivity_report

    selectivity_report(_probes(args.probes), args.out_csv, args.out_md, args.out_png, args.out_pdf)


def run_similarity_report(args) -> None:
    from projection_probe.analysis.reports import read_csvs, similarity_report

    similarity_report(read_csvs(args.similarity), args.out_csv, args.out_md, args.out_png, args.out_pdf)


def run_claims(args) -> None:
    from projection_probe.analysis.reports import claims_report
    from projection_probe.report.aggregate import read_all_runs

    claims_report(read_all_runs(args.all_runs), args.out_claims_csv, args.out_claims_md, args.out_stats_csv,
                  args.out_stats_md, args.out_png, args.out_pdf, args.bootstrap, args.permutations, args.confidence)


def run_recompute(args) -> None:
    """Walk ``RESULTS/analysis/{dataset}/{setting}/seed{seed}/layers_*.safetensors`` and redo every
    analysis step after extraction into ``--out-dir`` (default: in place)."""
    from pathlib import Path

    from projection_probe.analysis import reports
    from projection_probe.io import write_csv

    set_threads(args.threads)
    results = Path(args.results)
    out = Path(args.out_dir or results)
    opts = parse_json_arg("--options", args.options) if args.options else {}
    linear = opts.get("linear_probe", {})
    linear = {"c": linear.get("C", ANALYSIS_DEFAULTS.linear_c),
              "max_iter": linear.get("max_iter", ANALYSIS_DEFAULTS.linear_max_iter)}
    mlp = opts.get("mlp")
    probe_files, sim_files = [], []
    # results/analysis/{model}/{dataset}/{setting}/seed{seed}: the analyses take one model.
    layer_dirs = sorted({p.parent for p in (results / "analysis").glob("*/*/*/seed*/layers_test.safetensors")})
    if not layer_dirs:
        raise InputError(f"{results}/analysis: no */*/*/seed*/layers_test.safetensors; "
                         "run extract_layer_features first")
    by_dataset_seed: dict[tuple, dict] = {}
    for d in layer_dirs:
        model, dataset, setting = d.parent.parent.parent.name, d.parent.parent.name, d.parent.name
        seed = int(d.name.removeprefix("seed"))
        feats = results / "features" / model / dataset / setting / f"seed{seed}"
        has_feats = (feats / "train.safetensors").exists() and (feats / "test.safetensors").exists()
        frame = probe_one(dataset, setting, seed, results / "data" / dataset / "classes.json",
                          d / "layers_train.safetensors", d / "layers_test.safetensors",
                          feats / "train.safetensors" if has_feats else None,
                          feats / "test.safetensors" if has_feats else None, linear, mlp,
                          bool(opts.get("layer_mlp", False)), opts.get("poolings"),
                          bool(opts.get("control_tasks", True)), args.device, bool(opts.get("matched_mlp", True)))
        target = out / "analysis" / model / dataset / setting / f"seed{seed}" / "probes.csv"
        write_csv(target, frame)
        probe_files.append(target)
        entry = by_dataset_seed.setdefault((model, dataset, seed), {"layers": {}, "features": {}})
        entry["layers"][setting] = d / "layers_test.safetensors"
        if has_feats:
            entry["features"][setting] = feats / "test.safetensors"
    for (model, dataset, seed), entry in by_dataset_seed.items():
        target = out / "analysis" / model / dataset / f"seed{seed}" / "similarity.csv"
        knn_k = opts.get("knn_k", ANALYSIS_DEFAULTS.knn_k)
        write_csv(target, similarity_one(dataset, seed, entry["layers"], entry["features"], knn_k))
        sim_files.append(target)
    probes = reports.read_csvs(probe_files)
    n_boot = opts.get("bootstrap", ANALYSIS_DEFAULTS.bootstrap)
    conf = opts.get("confidence", ANALYSIS_DEFAULTS.confidence)
    t, f = out / "tables", out / "figures"
    reports.layerwise_report(probes, t / "analysis_layerwise.csv", t / "analysis_layerwise.md",
                             f / "analysis_layerwise_f1.png", f / "analysis_layerwise_f1.pdf", n_boot, conf)
    reports.matched_report(probes, t / "analysis_matched.csv", t / "analysis_matched.md",
                           f / "analysis_matched.png", f / "analysis_matched.pdf", n_boot, conf)
    reports.selectivity_report(probes, t / "analysis_selectivity.csv", t / "analysis_selectivity.md",
                               f / "analysis_selectivity.png", f / "analysis_selectivity.pdf")
    reports.similarity_report(reports.read_csvs(sim_files), t / "analysis_similarity.csv",
                              t / "analysis_similarity.md", f / "analysis_similarity.png",
                              f / "analysis_similarity.pdf")
    all_runs = results / "metrics" / "all_runs.csv"
    if all_runs.exists():
        from projection_probe.report.aggregate import read_all_runs

        reports.claims_report(read_all_runs(all_runs), t / "analysis_claims.csv", t / "analysis_claims.md",
                              t / "analysis_seed_stats.csv", t / "analysis_seed_stats.md", f / "analysis_claims.png",
                              f / "analysis_claims.pdf", n_boot,
                              opts.get("permutations", ANALYSIS_DEFAULTS.permutations), conf)
    log.info("recomputed %d probe files and %d similarity files into %s", len(probe_files), len(sim_files), out)


# ---------------------------------------------------------------- registration
def _report_outputs(p) -> None:
    for name in ("--out-csv", "--out-md", "--out-png", "--out-pdf"):
        p.add_argument(name, required=True)


def register(subparsers) -> None:
    p = subparsers.add_parser("extract-layer-features",
                              help="per-layer hidden states (mean over image tokens, final prompt token)")
    p.add_argument("--model", required=True, help="model folder with facade.json")
    p.add_argument("--prompts", required=True, help="prompts_seed{seed}.jsonl (train and test records)")
    p.add_argument("--vision-cache", required=True, help="vision.safetensors (X_v)")
    p.add_argument("--classes", required=True, help="classes.json")
    p.add_argument("--batch-size", type=int, default=ANALYSIS_DEFAULTS.layer_batch_size)
    p.add_argument("--storage-dtype", choices=("float16", "float32"), default=ANALYSIS_DEFAULTS.storage_dtype)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--trust-remote-code", action="store_true")
    add_threads_option(p)
    p.add_argument("--out-dir", required=True, help="writes layers_train.safetensors and layers_test.safetensors")
    p.set_defaults(handler=run_extract_layers)

    p = subparsers.add_parser("analysis-probe", help="layer-wise and matched pre/post probes with control tasks")
    p.add_argument("--dataset", required=True)
    p.add_argument("--setting", required=True)
    p.add_argument("--seed", type=int, required=True, help="probe seed and control-label seed")
    p.add_argument("--classes", required=True)
    p.add_argument("--device", default="cpu")
    add_threads_option(p)
    p.add_argument("--layers-train")
    p.add_argument("--layers-test")
    p.add_argument("--features-train", help="features-stage train.safetensors (pre, post): matched probes")
    p.add_argument("--features-test")
    p.add_argument("--poolings", default=None, help="comma list (default: all in the layer files)")
    p.add_argument("--c", type=float, default=ANALYSIS_DEFAULTS.linear_c,
                   help="logistic regression inverse regularisation")
    p.add_argument("--max-iter", type=int, default=ANALYSIS_DEFAULTS.linear_max_iter,
                   help="logistic regression iteration bound")
    p.add_argument("--mlp", default=None, help="JSON: MLP probe hyperparameters (hidden, lr, batch_size, ...); "
                                               "without it only linear probes run")
    p.add_argument("--layer-mlp", action="store_true", help="also an MLP probe per layer (needs --mlp)")
    p.add_argument("--matched-mlp", action=argparse.BooleanOptionalAction, default=True,
                   help="an MLP probe on pre/post besides the linear one (needs --mlp)")
    p.add_argument("--controls", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", required=True, help="probes.csv")
    p.set_defaults(handler=run_probe)

    p = subparsers.add_parser("analysis-similarity", help="linear CKA and mutual k-NN between settings, pre/post")
    p.add_argument("--dataset", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--layers", nargs="*", default=[], help="SETTING=layers_test.safetensors ...")
    p.add_argument("--features", nargs="*", default=[], help="SETTING=features test.safetensors ...")
    p.add_argument("--knn-k", type=int, default=ANALYSIS_DEFAULTS.knn_k)
    add_threads_option(p)
    p.add_argument("--out", required=True, help="similarity.csv")
    p.set_defaults(handler=run_similarity)

    for name, handler, text in (("analysis-layerwise-report", run_layerwise_report, "probe F1 vs layer"),
                                ("analysis-matched-report", run_matched_report, "matched pre/post probes")):
        p = subparsers.add_parser(name, help=f"table and figure: {text}")
        p.add_argument("--probes", nargs="+", required=True, help="probes.csv files")
        p.add_argument("--bootstrap", type=int, default=ANALYSIS_DEFAULTS.bootstrap,
                       help="bootstrap resamples over seeds (0: no CI)")
        p.add_argument("--confidence", type=float, default=ANALYSIS_DEFAULTS.confidence)
        _report_outputs(p)
        p.set_defaults(handler=handler)

    p = subparsers.add_parser("analysis-selectivity-report", help="table and figure: control tasks, selectivity")
    p.add_argument("--probes", nargs="+", required=True)
    _report_outputs(p)
    p.set_defaults(handler=run_selectivity_report)

    p = subparsers.add_parser("analysis-similarity-report", help="table and heatmap: CKA and mutual k-NN")
    p.add_argument("--similarity", nargs="+", required=True, help="similarity.csv files")
    _report_outputs(p)
    p.set_defaults(handler=run_similarity_report)

    p = subparsers.add_parser("analysis-claims", help="seed statistics and the paper's two claims from all_runs.csv")
    p.add_argument("--all-runs", required=True)
    p.add_argument("--bootstrap", type=int, default=ANALYSIS_DEFAULTS.bootstrap)
    p.add_argument("--permutations", type=int, default=ANALYSIS_DEFAULTS.permutations,
                   help="sign-flip resamples when 2^n exceeds this")
    p.add_argument("--confidence", type=float, default=ANALYSIS_DEFAULTS.confidence)
    for name in ("--out-claims-csv", "--out-claims-md", "--out-stats-csv", "--out-stats-md", "--out-png", "--out-pdf"):
        p.add_argument(name, required=True)
    p.set_defaults(handler=run_claims)

    p = subparsers.add_parser("analysis-recompute",
                              help="redo every analysis from saved layers_*.safetensors (no model, no Snakemake)")
    p.add_argument("--results", default="results", help="the results folder")
    p.add_argument("--out-dir", default=None, help="where to write (default: --results, in place)")
    p.add_argument("--options", default=None,
                   help='JSON, e.g. {"linear_probe": {"C": 1, "max_iter": 500}, "knn_k": 10, "bootstrap": 1000, '
                        '"control_tasks": true, "mlp": {...}, "layer_mlp": false}')
    p.add_argument("--device", default="cpu")
    add_threads_option(p)
    p.set_defaults(handler=run_recompute)
