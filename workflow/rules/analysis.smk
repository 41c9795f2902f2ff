# Beyond the paper (issue 8): where in the MLLM the domain knowledge lives. Optional: nothing here is
# requested unless `analyses.enabled` is true. Library: projection_probe.analysis; docs/analysis.md.
#
# extract_layer_features (dataset, setting, seed)   runs the MLLM once per image: per-layer states
# analysis_probe          (dataset, setting, seed)   layer-wise + matched pre/post probes, control tasks
# analysis_similarity     (dataset, seed)            CKA / mutual k-NN between settings and pre vs post
# analysis_{layerwise,matched,selectivity,similarity}_report, analysis_claims: tables + figures


ANALYSES = config.get("analyses") or {}
_LAYERWISE = {"enabled": True, "poolings": ["image_mean", "last_token"], "batch_size": 8,
              "storage_dtype": "float16", "mlp": False, **(ANALYSES.get("layerwise") or {})}
_LINEAR = {"C": 1.0, "max_iter": 500, **(ANALYSES.get("linear_probe") or {})}
_MATCHED = {"enabled": True, "mlp": True, **(ANALYSES.get("matched_probes") or {})}
_SIMILARITY = {"enabled": True, "knn_k": 10, **(ANALYSES.get("similarity") or {})}
_CONTROLS = bool(ANALYSES.get("control_tasks", True))
_BOOTSTRAP = int(ANALYSES.get("bootstrap", 1000))
_PERMUTATIONS = int(ANALYSES.get("permutations", 10000))
_CONFIDENCE = float(ANALYSES.get("confidence", 0.95))
ANALYSIS = f"{RESULTS}/analysis"


def analyses_enabled():
    return bool(ANALYSES.get("enabled", False))


def _probes_wanted():
    return _LAYERWISE["enabled"] or _MATCHED["enabled"]


def _mlp_json():
    """The paper's post-projection MLP probe hyperparameters (config `probes.post`), reused by the
    matched and the optional per-layer MLP probes so that they are the same probe family."""
    if not (_MATCHED["enabled"] and _MATCHED["mlp"]) and not _LAYERWISE["mlp"]:
        return ""
    spec = {k: v for k, v in config["probes"]["post"].items() if k != "feature"}
    return f"--mlp {as_json(spec)}"


def _probe_inputs(wildcards):
    base = f"{ANALYSIS}/{wildcards.dataset}/{wildcards.setting}/seed{wildcards.seed}"
    feats = f"{RESULTS}/features/{wildcards.dataset}/{wildcards.setting}/seed{wildcards.seed}"
    out = {"classes": f"{RESULTS}/data/{wildcards.dataset}/classes.json"}
    if _LAYERWISE["enabled"]:
        out.update(layers_train=f"{base}/layers_train.safetensors", layers_test=f"{base}/layers_test.safetensors")
    if _MATCHED["enabled"]:
        out.update(features_train=f"{feats}/train.safetensors", features_test=f"{feats}/test.safetensors")
    return out


def _probe_file_args(wildcards, input):
    args = [f"--{k.replace('_', '-')} {getattr(input, k)}" for k in
            ("layers_train", "layers_test", "features_train", "features_test") if hasattr(input, k)]
    return " ".join(args)


def _similarity_inputs(wildcards):
    out = {}
    for s in SETTINGS:
        if _LAYERWISE["enabled"]:
            out[f"layers_{s}"] = f"{ANALYSIS}/{wildcards.dataset}/{s}/seed{wildcards.seed}/layers_test.safetensors"
        out[f"features_{s}"] = f"{RESULTS}/features/{wildcards.dataset}/{s}/seed{wildcards.seed}/test.safetensors"
    return out


def _similarity_file_args(wildcards, input):
    layers = [f"{s}={getattr(input, 'layers_' + s)}" for s in SETTINGS if hasattr(input, "layers_" + s)]
    feats = [f"{s}={getattr(input, 'features_' + s)}" for s in SETTINGS]
    return f"--layers {' '.join(layers)} --features {' '.join(feats)}"


def probe_tables():
    return expand(f"{ANALYSIS}/{{dataset}}/{{setting}}/seed{{seed}}/probes.csv", dataset=DATASETS,
                  setting=SETTINGS, seed=SEEDS)


def similarity_tables():
    return expand(f"{ANALYSIS}/{{dataset}}/seed{{seed}}/similarity.csv", dataset=DATASETS, seed=SEEDS)


def _report_files(name, figure):
    return {"csv": f"{RESULTS}/tables/analysis_{name}.csv", "md": f"{RESULTS}/tables/analysis_{name}.md",
            "png": f"{RESULTS}/figures/analysis_{figure}.png", "pdf": f"{RESULTS}/figures/analysis_{figure}.pdf"}


def analysis_targets():
    """Final outputs of the enabled analyses (for `rule all`); [] when `analyses.enabled` is false."""
    if not analyses_enabled():
        return []
    names = [("claims", "claims")]
    if _LAYERWISE["enabled"]:
        names.append(("layerwise", "layerwise_f1"))
    if _MATCHED["enabled"]:
        names.append(("matched", "matched"))
    if _CONTROLS and _probes_wanted():
        names.append(("selectivity", "selectivity"))
    if _SIMILARITY["enabled"]:
        names.append(("similarity", "similarity"))
    targets = [f for name, fig in names for f in _report_files(name, fig).values()]
    targets += [f"{RESULTS}/tables/analysis_seed_stats.csv", f"{RESULTS}/tables/analysis_seed_stats.md"]
    return targets


localrules:
    analysis_all,
    analysis_layerwise_report,
    analysis_matched_report,
    analysis_selectivity_report,
    analysis_similarity_report,
    analysis_claims,


rule analysis_all:
    input:
        analysis_targets(),


rule extract_layer_features:
    input:
        model=model_spec,
        prompts=f"{RESULTS}/data/{{dataset}}/prompts_seed{{seed}}.jsonl",
        cache=setting_vision_cache,
        classes=f"{RESULTS}/data/{{dataset}}/classes.json",
    output:
        train=f"{ANALYSIS}/{{dataset}}/{{setting}}/seed{{seed}}/layers_train.safetensors",
        test=f"{ANALYSIS}/{{dataset}}/{{setting}}/seed{{seed}}/layers_test.safetensors",
    params:
        batch_size=_LAYERWISE["batch_size"],
        storage_dtype=_LAYERWISE["storage_dtype"],
        device=MODEL.get("device", "cpu"),
        dtype=MODEL.get("dtype", "float32"),
        remote_code="--trust-remote-code" if MODEL.get("trust_remote_code", False) else "",
    # One GPU (Slurm: --gpus=1). Locally the resource is unbounded unless --resources gpu=N.
    resources:
        gpu=1,
    threads: THREADS
    conda:
        CONDA_ENV
    log:
        log_path("extract_layer_features", "{dataset}", "{setting}", "seed{seed}"),
    benchmark:
        f"{RESULTS}/benchmarks/analysis/extract_layer_features_{{dataset}}_{{setting}}_seed{{seed}}.tsv"
    shell:
        "projection-probe analysis-extract-layers --model $(dirname {input.model}) --prompts {input.prompts}"
        " --vision-cache {input.cache} --classes {input.classes} --batch-size {params.batch_size}"
        " --storage-dtype {params.storage_dtype} --device {params.device} --dtype {params.dtype}"
        " {params.remote_code} --threads {threads} --out-dir $(dirname {output.train}) > {log} 2>&1"


rule analysis_probe:
    input:
        unpack(_probe_inputs),
    output:
        f"{ANALYSIS}/{{dataset}}/{{setting}}/seed{{seed}}/probes.csv",
    params:
        files=_probe_file_args,
        poolings=",".join(_LAYERWISE["poolings"]),
        c=_LINEAR["C"],
        max_iter=_LINEAR["max_iter"],
        mlp=_mlp_json(),
        layer_mlp="--layer-mlp" if _LAYERWISE["mlp"] else "",
        matched_mlp="--matched-mlp" if _MATCHED["mlp"] else "--no-matched-mlp",
        controls="--controls" if _CONTROLS else "--no-controls",
        device=MODEL.get("device", "cpu"),
    threads: THREADS
    conda:
        CONDA_ENV
    log:
        log_path("analysis_probe", "{dataset}", "{setting}", "seed{seed}"),
    benchmark:
        f"{RESULTS}/benchmarks/analysis/analysis_probe_{{dataset}}_{{setting}}_seed{{seed}}.tsv"
    shell:
        "projection-probe analysis-probe --dataset {wildcards.dataset} --setting {wildcards.setting}"
        " --seed {wildcards.seed} --classes {input.classes} {params.files} --poolings {params.poolings}"
        " --c {params.c} --max-iter {params.max_iter} {params.mlp} {params.layer_mlp} {params.matched_mlp}"
        " {params.controls}"
        " --device {params.device} --threads {threads} --out {output} > {log} 2>&1"


rule analysis_similarity:
    input:
        unpack(_similarity_inputs),
    output:
        f"{ANALYSIS}/{{dataset}}/seed{{seed}}/similarity.csv",
    params:
        files=_similarity_file_args,
        knn_k=_SIMILARITY["knn_k"],
    threads: THREADS
    conda:
        CONDA_ENV
    log:
        log_path("analysis_similarity", "{dataset}", "seed{seed}"),
    benchmark:
        f"{RESULTS}/benchmarks/analysis/analysis_similarity_{{dataset}}_seed{{seed}}.tsv"
    shell:
        "projection-probe analysis-similarity --dataset {wildcards.dataset} --seed {wildcards.seed}"
        " {params.files} --knn-k {params.knn_k} --threads {threads} --out {output} > {log} 2>&1"


def _report_rule_outputs(name, figure, title):
    f = _report_files(name, figure)
    caption = f"../report/analysis_{name}.rst"
    labels = {"analysis": title}
    return dict(
        csv=report(f["csv"], caption=caption, category="Beyond the paper", subcategory=title, labels={**labels, "file": "table (CSV)"}),
        md=f["md"],
        png=report(f["png"], caption=caption, category="Beyond the paper", subcategory=title, labels={**labels, "file": "figure"}),
        pdf=f["pdf"],
    )


rule analysis_layerwise_report:
    input:
        probe_tables(),
    output:
        **_report_rule_outputs("layerwise", "layerwise_f1", "Layer-wise probes"),
    params:
        bootstrap=_BOOTSTRAP,
        confidence=_CONFIDENCE,
    conda:
        CONDA_ENV
    log:
        log_path("analysis_layerwise_report", "all"),
    shell:
        "projection-probe analysis-layerwise-report --probes {input} --bootstrap {params.bootstrap}"
        " --confidence {params.confidence} --out-csv {output.csv} --out-md {output.md} --out-png {output.png}"
        " --out-pdf {output.pdf} > {log} 2>&1"


rule analysis_matched_report:
    input:
        probe_tables(),
    output:
        **_report_rule_outputs("matched", "matched", "Matched pre/post probes"),
    params:
        bootstrap=_BOOTSTRAP,
        confidence=_CONFIDENCE,
    conda:
        CONDA_ENV
    log:
        log_path("analysis_matched_report", "all"),
    shell:
        "projection-probe analysis-matched-report --probes {input} --bootstrap {params.bootstrap}"
        " --confidence {params.confidence} --out-csv {output.csv} --out-md {output.md} --out-png {output.png}"
        " --out-pdf {output.pdf} > {log} 2>&1"


rule analysis_selectivity_report:
    input:
        probe_tables(),
    output:
        **_report_rule_outputs("selectivity", "selectivity", "Control tasks"),
    conda:
        CONDA_ENV
    log:
        log_path("analysis_selectivity_report", "all"),
    shell:
        "projection-probe analysis-selectivity-report --probes {input} --out-csv {output.csv} --out-md {output.md}"
        " --out-png {output.png} --out-pdf {output.pdf} > {log} 2>&1"


rule analysis_similarity_report:
    input:
        similarity_tables(),
    output:
        **_report_rule_outputs("similarity", "similarity", "Representation similarity"),
    conda:
        CONDA_ENV
    log:
        log_path("analysis_similarity_report", "all"),
    shell:
        "projection-probe analysis-similarity-report --similarity {input} --out-csv {output.csv}"
        " --out-md {output.md} --out-png {output.png} --out-pdf {output.pdf} > {log} 2>&1"


rule analysis_claims:
    input:
        f"{RESULTS}/metrics/all_runs.csv",
    output:
        claims_csv=report(f"{RESULTS}/tables/analysis_claims.csv", caption="../report/analysis_claims.rst",
                          category="Beyond the paper", subcategory="Claims and seed statistics",
                          labels={"analysis": "Claims", "file": "claims table (CSV)"}),
        claims_md=f"{RESULTS}/tables/analysis_claims.md",
        stats_csv=report(f"{RESULTS}/tables/analysis_seed_stats.csv", caption="../report/analysis_seed_stats.rst",
                         category="Beyond the paper", subcategory="Claims and seed statistics",
                         labels={"analysis": "Seed statistics", "file": "table (CSV)"}),
        stats_md=f"{RESULTS}/tables/analysis_seed_stats.md",
        png=report(f"{RESULTS}/figures/analysis_claims.png", caption="../report/analysis_claims.rst",
                   category="Beyond the paper", subcategory="Claims and seed statistics",
                   labels={"analysis": "Claims", "file": "figure"}),
        pdf=f"{RESULTS}/figures/analysis_claims.pdf",
    params:
        bootstrap=_BOOTSTRAP,
        permutations=_PERMUTATIONS,
        confidence=_CONFIDENCE,
    conda:
        CONDA_ENV
    log:
        log_path("analysis_claims", "all"),
    shell:
        "projection-probe analysis-claims --all-runs {input} --bootstrap {params.bootstrap}"
        " --permutations {params.permutations} --confidence {params.confidence}"
        " --out-claims-csv {output.claims_csv} --out-claims-md {output.claims_md}"
        " --out-stats-csv {output.stats_csv} --out-stats-md {output.stats_md}"
        " --out-png {output.png} --out-pdf {output.pdf} > {log} 2>&1"
