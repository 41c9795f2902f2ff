"""CLI: ``aggregate`` (predictions -> all_runs.csv), ``make-tables`` and ``make-figure``.

``aggregate`` receives its runs as a JSON list of objects with the keys
``dataset, setting, seed, method, predictions, classes`` (see ``report.aggregate``): inline with
``--runs`` (what the Snakemake rule passes, so that the run list is a param and a changed list reruns
aggregation) or from a file with ``--runs-json``.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "aggregate", help="recompute every run's metrics from its predictions CSV into all_runs.csv",
        description="Read a JSON list of runs {dataset, setting, seed, method, predictions, classes}; write the "
                    "tidy table dataset,setting,seed,method,metric,value (macro_f1, accuracy, invalid_rate).")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs-json", help="file holding a JSON list of run objects")
    source.add_argument("--runs", help="the JSON list of run objects itself")
    p.add_argument("--f1-classes", choices=("true", "observed", "all"), default="true",
                   help="classes macro-F1 averages over (see evaluate.metrics)")
    p.add_argument("--out", required=True, help="all_runs.csv")
    p.set_defaults(handler=run_aggregate)

    p = subparsers.add_parser(
        "make-tables", help="Tables 1-3 as CSV, Markdown and LaTeX from all_runs.csv",
        description="Write DIR/table{1,2,3}.{csv,md,tex}: mean ± sample std over seeds.")
    p.add_argument("--all-runs", required=True, help="all_runs.csv from `aggregate`")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--encoder-name", default="CLIP", help="label of the encoder zero-shot row (\"<NAME> zero-shot\")")
    p.add_argument("--mllm-name", default="MLLM", help="label of the MLLM's zero-shot row (\"<NAME> zero-shot\")")
    p.add_argument("--paper-results", default=None, help="resources/paper_results.csv: add paper and Δ columns")
    p.add_argument("--paper-map", default=None,
                   help="JSON object (inline, or a file holding it): our dataset name -> the paper\'s dataset name")
    p.set_defaults(handler=run_make_tables)

    p = subparsers.add_parser(
        "make-figure", help="Figure 1 (right): post-projection probe F1 vs MLLM F1",
        description="Scatter of post-projection probe macro-F1 (x) vs MLLM macro-F1 (y) per dataset and setting.")
    p.add_argument("--all-runs", required=True)
    p.add_argument("--out-png", required=True)
    p.add_argument("--out-pdf", required=True)
    p.set_defaults(handler=run_make_figure)


def run_aggregate(args) -> int:
    from projection_probe.io import write_csv
    from projection_probe.report.aggregate import collect_runs, read_runs_json

    if args.runs is not None:
        from projection_probe.cli import parse_json_arg
        from projection_probe.io import InputError
        from projection_probe.report.aggregate import validate_entry

        entries = parse_json_arg("--runs", args.runs)
        if not isinstance(entries, list):
            raise InputError("--runs: expected a JSON list of run objects")
        entries = [validate_entry(e, f"--runs[{i}]") for i, e in enumerate(entries)]
    else:
        entries = read_runs_json(args.runs_json)
    frame = collect_runs(entries, f1_classes=args.f1_classes)
    write_csv(args.out, frame)
    log.info("aggregate: %d runs -> %s", len(entries), args.out)
    return 0


def run_make_tables(args) -> int:
    from projection_probe.io import InputError
    from projection_probe.report.aggregate import read_all_runs
    from projection_probe.report.tables import PaperResults, make_tables

    if (args.paper_results is None) != (args.paper_map is None):
        raise InputError("--paper-results and --paper-map go together: give both or neither")
    paper = PaperResults.load(args.paper_results, args.paper_map) if args.paper_results else None
    written = make_tables(read_all_runs(args.all_runs), args.out_dir, encoder_name=args.encoder_name,
                          mllm_name=args.mllm_name, paper=paper)
    log.info("make-tables: wrote %d files to %s", len(written), args.out_dir)
    return 0


def run_make_figure(args) -> int:
    from projection_probe.report.aggregate import read_all_runs
    from projection_probe.report.figures import plot_richness

    points = plot_richness(read_all_runs(args.all_runs), args.out_png, args.out_pdf)
    log.info("make-figure: %d points -> %s, %s", len(points), args.out_png, args.out_pdf)
    return 0
