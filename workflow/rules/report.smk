# all_runs.csv is recomputed from every per-image predictions file; tables and the figure come from it.


rule aggregate:
    input:
        [run["predictions"] for run in all_runs()],
        classes=expand(rules.prepare_dataset.output.classes, dataset=DATASETS),
    output:
        f"{RESULTS}/metrics/all_runs.csv",
    log:
        log_path("aggregate", "all"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        runs=as_json(all_runs()),
        f1_classes=config_value("metrics.f1_classes", "true"),
    shell:
        "projection-probe aggregate --runs {params.runs} --f1-classes {params.f1_classes}"
        " --out {output} > {log} 2>&1"


rule make_tables:
    input:
        all_runs=rules.aggregate.output,
        paper=[PAPER_RESULTS] if config_value("report.paper_map") else [],
    output:
        report(
            expand(f"{RESULTS}/tables/table{{n}}.{{ext}}", n=[1], ext=["csv", "md", "tex"]),
            caption="../report/table1.rst",
            category="Tables",
            labels={"table": "1: classification"},
        ),
        report(
            expand(f"{RESULTS}/tables/table{{n}}.{{ext}}", n=[2], ext=["csv", "md", "tex"]),
            caption="../report/table2.rst",
            category="Tables",
            labels={"table": "2: post-projection richness"},
        ),
        report(
            expand(f"{RESULTS}/tables/table{{n}}.{{ext}}", n=[3], ext=["csv", "md", "tex"]),
            caption="../report/table3.rst",
            category="Tables",
            labels={"table": "3: image-only MLP"},
        ),
    log:
        log_path("make_tables", "all"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        encoder=shlex.quote(config_value("report.encoder_name", "CLIP")),
        mllm=shlex.quote(config_value("report.mllm_name", "LLaVA-1.5")),
        paper=paper_args(),
        # The outputs' folder: where they go, not a setting.
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "projection-probe make-tables --all-runs {input.all_runs} --out-dir {params.out_dir} --encoder-name {params.encoder}"
        " --mllm-name {params.mllm} {params.paper} > {log} 2>&1"


rule make_figure:
    input:
        rules.aggregate.output,
    output:
        png=report(f"{RESULTS}/figures/richness_vs_f1.png", caption="../report/figure_richness.rst", category="Figures"),
        pdf=f"{RESULTS}/figures/richness_vs_f1.pdf",
    log:
        log_path("make_figure", "all"),
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "projection-probe make-figure --all-runs {input} --out-png {output.png} --out-pdf {output.pdf} > {log} 2>&1"
