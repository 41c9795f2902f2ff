# Data stage: one manifest per dataset, one LLaVA-format prompts file per dataset and seed.


rule prepare_dataset:
    input:
        downloaded_root,
    output:
        manifest=f"{RESULTS}/data/{{dataset}}/manifest.csv",
        classes=classes_file("{dataset}"),
        bad_images=f"{RESULTS}/data/{{dataset}}/bad_images.txt",
        warnings=f"{RESULTS}/data/{{dataset}}/warnings.txt",
    log:
        log_path("prepare_dataset", "{dataset}"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        source=lambda wc: source_args(wc.dataset),
        classes=lambda wc: as_json(config["datasets"][wc.dataset].get("classes")),
        task=lambda wc: shlex.quote(config["datasets"][wc.dataset]["task"]),
        on_bad_image=config_value("data.on_bad_image", "fail") + cross_split_duplicates_flag(),
        train_only=(
            "--allow-train-only-classes"
            if config_value("data.allow_train_only_classes", True)
            else "--no-allow-train-only-classes"
        ),
    shell:
        "projection-probe prepare-dataset --dataset {wildcards.dataset} --source-json {params.source}"
        " --classes-json {params.classes} --task {params.task} --on-bad-image {params.on_bad_image}"
        " {params.train_only} --out-dir $(dirname {output.manifest}) > {log} 2>&1"


rule build_prompts:
    input:
        manifest=rules.prepare_dataset.output.manifest,
        classes=rules.prepare_dataset.output.classes,
    output:
        prompts=f"{RESULTS}/data/{{dataset}}/prompts_seed{{seed}}.jsonl",
    log:
        log_path("build_prompts", "{dataset}", "seed{seed}"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        cue="--output-cue" if config_value("data.prompt_output_cue", False) else "--no-output-cue",
    shell:
        "projection-probe build-prompts --manifest {input.manifest} --classes {input.classes}"
        " --seed {wildcards.seed} {params.cue} --out {output} > {log} 2>&1"
