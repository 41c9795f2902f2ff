# X_v once per dataset and image preprocessing (the vision tower is frozen in every setting), for the
# first model of each vision tower (`vision_owner`), then pooled pre/post-projection vectors per model
# from that cache: only the projector runs, no LLM weights are read.


# Two rules, one command: the model's own preprocessing (vision.safetensors, used by most configs)
# and any other one that a setting asks for (vision_{preprocessing}.safetensors).
rule extract_vision_features:
    input:
        manifest=rules.prepare_dataset.output.manifest,
    output:
        f"{RESULTS}/features/{{model}}/{{dataset}}/vision.safetensors",
    log:
        log_path("extract_vision_features", "{model}", "{dataset}"),
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **ONE_GPU,
    params:
        vision=lambda wc: as_json(vision_spec(wc.model)),
        preprocessing=lambda wc: default_preprocessing(wc.model) + exif_transpose_flag(),
        device=lambda wc: model_device(wc.model),
    shell:
        "projection-probe extract-vision-features --vision-json {params.vision} --manifest {input.manifest}"
        " --image-preprocessing {params.preprocessing} --batch-size {OPERATIONAL.features_batch_size}"
        " --num-workers {OPERATIONAL.num_workers} --device {params.device} --threads {threads}"
        " --out {output} > {log} 2>&1"


use rule extract_vision_features as extract_vision_features_variant with:
    output:
        f"{RESULTS}/features/{{model}}/{{dataset}}/vision_{{preprocessing}}.safetensors",
    log:
        log_path("extract_vision_features", "{model}", "{dataset}_{preprocessing}"),
    wildcard_constraints:
        preprocessing="|".join(IMAGE_PREPROCESSINGS),
    params:
        vision=lambda wc: as_json(vision_spec(wc.model)),
        preprocessing=lambda wc: wc.preprocessing + exif_transpose_flag(),
        device=lambda wc: model_device(wc.model),


rule extract_features:
    input:
        model=model_spec,
        cache=setting_vision_cache,
        manifest=rules.prepare_dataset.output.manifest,
        classes=rules.prepare_dataset.output.classes,
    output:
        train=f"{RESULTS}/features/{{model}}/{{dataset}}/{{setting}}/seed{{seed}}/train.safetensors",
        test=f"{RESULTS}/features/{{model}}/{{dataset}}/{{setting}}/seed{{seed}}/test.safetensors",
    log:
        log_path("extract_features", "{model}", "{dataset}", "{setting}", "seed{seed}"),
    group:
        slurm_group(MODEL_GROUP)
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **ONE_GPU,
    params:
        device=lambda wc: model_device(wc.model),
    shell:
        "projection-probe extract-features --model $(dirname {input.model}) --vision-cache {input.cache}"
        " --manifest {input.manifest} --classes {input.classes} --device {params.device}"
        " --threads {threads} --out-dir $(dirname {output.train}) > {log} 2>&1"
