# X_v once per dataset and image preprocessing (the vision tower is frozen in every setting), then
# pooled pre/post-projection vectors per model from that cache: only the projector runs, no LLM
# weights are read.


# Two rules, one command: the model's own preprocessing (vision.safetensors, used by most configs)
# and any other one that a setting asks for (vision_{preprocessing}.safetensors).
rule extract_vision_features:
    input:
        manifest=rules.prepare_dataset.output.manifest,
    output:
        f"{RESULTS}/features/{{dataset}}/vision.safetensors",
    log:
        log_path("extract_vision_features", "{dataset}"),
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **ONE_GPU,
    params:
        vision=as_json(vision_spec()),
        preprocessing=default_preprocessing() + exif_transpose_flag(),
        device=DEVICE,
    shell:
        "projection-probe extract-vision-features --vision-json {params.vision} --manifest {input.manifest}"
        " --image-preprocessing {params.preprocessing} --batch-size {OPERATIONAL.features_batch_size}"
        " --num-workers {OPERATIONAL.num_workers} --device {params.device} --threads {threads}"
        " --out {output} > {log} 2>&1"


use rule extract_vision_features as extract_vision_features_variant with:
    output:
        f"{RESULTS}/features/{{dataset}}/vision_{{preprocessing}}.safetensors",
    log:
        log_path("extract_vision_features", "{dataset}_{preprocessing}"),
    wildcard_constraints:
        preprocessing="|".join(IMAGE_PREPROCESSINGS),
    params:
        vision=as_json(vision_spec()),
        preprocessing=lambda wc: wc.preprocessing + exif_transpose_flag(),
        device=DEVICE,


rule extract_features:
    input:
        model=model_spec,
        cache=setting_vision_cache,
        manifest=rules.prepare_dataset.output.manifest,
        classes=rules.prepare_dataset.output.classes,
    output:
        train=f"{RESULTS}/features/{{dataset}}/{{setting}}/seed{{seed}}/train.safetensors",
        test=f"{RESULTS}/features/{{dataset}}/{{setting}}/seed{{seed}}/test.safetensors",
    log:
        log_path("extract_features", "{dataset}", "{setting}", "seed{seed}"),
    group:
        slurm_group(MODEL_GROUP)
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **ONE_GPU,
    params:
        device=DEVICE,
    shell:
        "projection-probe extract-features --model $(dirname {input.model}) --vision-cache {input.cache}"
        " --manifest {input.manifest} --classes {input.classes} --device {params.device}"
        " --threads {threads} --out-dir $(dirname {output.train}) > {log} 2>&1"
