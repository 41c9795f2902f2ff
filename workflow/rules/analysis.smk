# Beyond the paper: where in the MLLM the domain knowledge lives. Optional: nothing here is
# requested unless `analyses.enabled` is true. Library: projection_probe.analysis; docs/analysis.md.
#
# extract_layer_features (model, dataset, setting, seed)   runs the MLLM once per image: per-layer states
# analysis_probe          (model, dataset, setting, seed)   layer-wise + matched pre/post probes, control tasks
# analysis_similarity     (model, dataset, seed)          CKA / mutual k-NN between settings and pre vs post
# analysis_{layerwise,matched,selectivity,similarity}_report, analysis_claims: tables + figures


rule analysis_all:
    input:
        analysis_targets(),
    localrule: True


rule extract_layer_features:
    input:
        model=model_spec,
        prompts=rules.build_prompts.output.prompts,
        cache=setting_vision_cache,
        classes=rules.prepare_dataset.output.classes,
    output:
        train=f"{ANALYSIS}/{{model}}/{{dataset}}/{{setting}}/seed{{seed}}/layers_train.safetensors",
        test=f"{ANALYSIS}/{{model}}/{{dataset}}/{{setting}}/seed{{seed}}/layers_test.safetensors",
    log:
        log_path("extract_layer_features", "{model}", "{dataset}", "{setting}", "seed{seed}"),
    benchmark:
        f"{RESULTS}/benchmarks/analysis/extract_layer_features_{{model}}_{{dataset}}_{{setting}}_seed{{seed}}.tsv"
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **ONE_GPU,
    params:
        storage_dtype=LAYERWISE["storage_dtype"],
        device=lambda wc: model_device(wc.model),
        dtype=lambda wc: model_dtype(wc.model),
        remote_code=lambda wc: remote_code_flag(wc.model),
    shell:
        "projection-probe extract-layer-features --model $(dirname {input.model}) --prompts {input.prompts}"
        " --vision-cache {input.cache} --classes {input.classes} --batch-size {OPERATIONAL.layer_batch_size}"
        " --storage-dtype {params.storage_dtype} --device {params.device} --dtype {params.dtype}"
        " {params.remote_code} --threads {threads} --out-dir $(dirname {output.train}) > {log} 2>&1"


rule analysis_probe:
    input:
        unpack(analysis_probe_inputs),
    output:
        f"{ANALYSIS}/{{model}}/{{dataset}}/{{setting}}/seed{{seed}}/probes.csv",
    log:
        log_path("analysis_probe", "{model}", "{dataset}", "{setting}", "seed{seed}"),
    benchmark:
        f"{RESULTS}/benchmarks/analysis/analysis_probe_{{model}}_{{dataset}}_{{setting}}_seed{{seed}}.tsv"
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        files=analysis_probe_file_args,
        poolings=",".join(LAYERWISE["poolings"]),
        c=LINEAR_PROBE["C"],
        max_iter=LINEAR_PROBE["max_iter"],
        mlp=analysis_mlp_json(),
        layer_mlp="--layer-mlp" if LAYERWISE["mlp"] else "",
        matched_mlp="--matched-mlp" if MATCHED_PROBES["mlp"] else "--no-matched-mlp",
        controls="--controls" if CONTROL_TASKS else "--no-controls",
        device=lambda wc: model_device(wc.model),
    shell:
        "projection-probe analysis-probe --dataset {wildcards.dataset} --setting {wildcards.setting}"
        " --seed {wildcards.seed} --classes {input.classes} {params.files} --poolings {params.poolings}"
        " --c {params.c} --max-iter {params.max_iter} {params.mlp} {params.layer_mlp} {params.matched_mlp}"
        " {params.controls}"
        " --device {params.device} --threads {threads} --out {output} > {log} 2>&1"


rule analysis_similarity:
    input:
        unpack(analysis_similarity_inputs),
    output:
        f"{ANALYSIS}/{{model}}/{{dataset}}/seed{{seed}}/similarity.csv",
    log:
        log_path("analysis_similarity", "{model}", "{dataset}", "seed{seed}"),
    benchmark:
        f"{RESULTS}/benchmarks/analysis/analysis_similarity_{{model}}_{{dataset}}_seed{{seed}}.tsv"
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        files=analysis_similarity_file_args,
        knn_k=SIMILARITY["knn_k"],
    shell:
        "projection-probe analysis-similarity --dataset {wildcards.dataset} --seed {wildcards.seed}"
        " {params.files} --knn-k {params.knn_k} --threads {threads} --out {output} > {log} 2>&1"


rule analysis_layerwise_report:
    input:
        probe_tables(),
    output:
        **analysis_report_outputs("layerwise", "layerwise_f1", "Layer-wise probes"),
    log:
        log_path("analysis_layerwise_report", "all"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        bootstrap=BOOTSTRAP,
        confidence=CONFIDENCE,
    shell:
        "projection-probe analysis-layerwise-report --probes {input} --bootstrap {params.bootstrap}"
        " --confidence {params.confidence} --out-csv {output.csv} --out-md {output.md} --out-png {output.png}"
        " --out-pdf {output.pdf} > {log} 2>&1"


rule analysis_matched_report:
    input:
        probe_tables(),
    output:
        **analysis_report_outputs("matched", "matched", "Matched pre/post probes"),
    log:
        log_path("analysis_matched_report", "all"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        bootstrap=BOOTSTRAP,
        confidence=CONFIDENCE,
    shell:
        "projection-probe analysis-matched-report --probes {input} --bootstrap {params.bootstrap}"
        " --confidence {params.confidence} --out-csv {output.csv} --out-md {output.md} --out-png {output.png}"
        " --out-pdf {output.pdf} > {log} 2>&1"


rule analysis_selectivity_report:
    input:
        probe_tables(),
    output:
        **analysis_report_outputs("selectivity", "selectivity", "Control tasks"),
    log:
        log_path("analysis_selectivity_report", "all"),
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "projection-probe analysis-selectivity-report --probes {input} --out-csv {output.csv} --out-md {output.md}"
        " --out-png {output.png} --out-pdf {output.pdf} > {log} 2>&1"


rule analysis_similarity_report:
    input:
        similarity_tables(),
    output:
        **analysis_report_outputs("similarity", "similarity", "Representation similarity"),
    log:
        log_path("analysis_similarity_report", "all"),
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "projection-probe analysis-similarity-report --similarity {input} --out-csv {output.csv}"
        " --out-md {output.md} --out-png {output.png} --out-pdf {output.pdf} > {log} 2>&1"


rule analysis_claims:
    input:
        f"{RESULTS}/metrics/all_runs.csv",
    output:
        claims_csv=report(
            f"{RESULTS}/tables/analysis_claims.csv",
            caption="../report/analysis_claims.rst",
            category="Beyond the paper",
            subcategory="Claims and seed statistics",
            labels={"analysis": "Claims", "file": "claims table (CSV)"},
        ),
        claims_md=f"{RESULTS}/tables/analysis_claims.md",
        stats_csv=report(
            f"{RESULTS}/tables/analysis_seed_stats.csv",
            caption="../report/analysis_seed_stats.rst",
            category="Beyond the paper",
            subcategory="Claims and seed statistics",
            labels={"analysis": "Seed statistics", "file": "table (CSV)"},
        ),
        stats_md=f"{RESULTS}/tables/analysis_seed_stats.md",
        png=report(
            f"{RESULTS}/figures/analysis_claims.png",
            caption="../report/analysis_claims.rst",
            category="Beyond the paper",
            subcategory="Claims and seed statistics",
            labels={"analysis": "Claims", "file": "figure"},
        ),
        pdf=f"{RESULTS}/figures/analysis_claims.pdf",
    log:
        log_path("analysis_claims", "all"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        bootstrap=BOOTSTRAP,
        permutations=PERMUTATIONS,
        confidence=CONFIDENCE,
    shell:
        "projection-probe analysis-claims --all-runs {input} --bootstrap {params.bootstrap}"
        " --permutations {params.permutations} --confidence {params.confidence}"
        " --out-claims-csv {output.claims_csv} --out-claims-md {output.claims_md}"
        " --out-stats-csv {output.stats_csv} --out-stats-md {output.stats_md}"
        " --out-png {output.png} --out-pdf {output.pdf} > {log} 2>&1"
