# X_v once per dataset (the vision tower is frozen in every setting), then pooled pre/post-projection
# vectors per model from that cache: only the projector runs, no LLM weights are read.


rule extract_vision_features:
    input:
        manifest=rules.prepare_dataset.output.manifest,
    output:
        f"{RESULTS}/features/{{dataset}}/vision.safetensors",
    params:
        vision=as_json(vision_spec()),
        preprocessing=MODEL.get("image_preprocessing", "pad"),
        batch_size=config.get("features", {}).get("batch_size", 32),
        num_workers=config.get("features", {}).get("num_workers", 0),
        device=MODEL.get("device", "cpu"),
    # One GPU (Slurm: --gpus=1). Locally the resource is unbounded unless --resources gpu=N.
    resources:
        gpu=1,
    threads: THREADS
    conda:
        CONDA_ENV
    log:
        log_path("extract_vision_features", "{dataset}"),
    shell:
        "projection-probe extract-vision-features --vision-json {params.vision} --manifest {input.manifest}"
        " --image-preprocessing {params.preprocessing} --batch-size {params.batch_size}"
        " --num-workers {params.num_workers} --device {params.device} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule extract_features:
    input:
        model=model_spec,
        cache=rules.extract_vision_features.output,
        manifest=rules.prepare_dataset.output.manifest,
        classes=rules.prepare_dataset.output.classes,
    output:
        train=f"{RESULTS}/features/{{dataset}}/{{setting}}/seed{{seed}}/train.safetensors",
        test=f"{RESULTS}/features/{{dataset}}/{{setting}}/seed{{seed}}/test.safetensors",
    params:
        device=MODEL.get("device", "cpu"),
    # One GPU (Slurm: --gpus=1). Locally the resource is unbounded unless --resources gpu=N.
    resources:
        gpu=1,
    threads: THREADS
    conda:
        CONDA_ENV
    log:
        log_path("extract_features", "{dataset}", "{setting}", "seed{seed}"),
    shell:
        "projection-probe extract-features --model $(dirname {input.model}) --vision-cache {input.cache}"
        " --manifest {input.manifest} --classes {input.classes} --device {params.device}"
        " --threads {threads} --out-dir $(dirname {output.train}) > {log} 2>&1"
