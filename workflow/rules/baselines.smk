# Baselines: uniform random per seed, and the encoder's own zero-shot where it has a text tower (CLIP).


rule random_baseline:
    input:
        manifest=f"{RESULTS}/data/{{dataset}}/manifest.csv",
        classes=f"{RESULTS}/data/{{dataset}}/classes.json",
    output:
        f"{RESULTS}/baselines/{{dataset}}/random/seed{{seed}}.csv",
    conda:
        CONDA_ENV
    log:
        log_path("random_baseline", "{dataset}", "seed{seed}"),
    shell:
        "projection-probe random-baseline --manifest {input.manifest} --classes {input.classes}"
        " --seed {wildcards.seed} --out {output} > {log} 2>&1"


def zero_shot_args():
    z = config.get("baselines", {}).get("encoder_zero_shot", {})
    templates = " ".join(f"--template {shlex.quote(t)}" for t in z.get("templates", ["This is a photo of {}."]))
    case = "--lowercase-labels" if z.get("lowercase_labels", True) else "--no-lowercase-labels"
    # `--label-set test` only when set, so that configs without the key keep their params.
    label_set = " --label-set test" if z.get("label_set", "pinned") == "test" else ""
    return (f"--model {shlex.quote(str(z.get('model')))} {templates} {case}"
            f" --image-preprocessing {z.get('image_preprocessing', 'square')} --batch-size {z.get('batch_size', 32)}"
            f"{label_set}")


rule encoder_zero_shot:
    input:
        manifest=f"{RESULTS}/data/{{dataset}}/manifest.csv",
        classes=f"{RESULTS}/data/{{dataset}}/classes.json",
    output:
        f"{RESULTS}/baselines/{{dataset}}/encoder_zero_shot.csv",
    params:
        args=zero_shot_args(),
        workers=config.get("features", {}).get("num_workers", 0),
        device=MODEL.get("device", "cpu"),
    # One GPU (Slurm: --gpus=1). Locally the resource is unbounded unless --resources gpu=N.
    resources:
        gpu=1,
    threads: THREADS
    conda:
        CONDA_ENV
    log:
        log_path("encoder_zero_shot", "{dataset}"),
    shell:
        "projection-probe clip-zero-shot --manifest {input.manifest} --classes {input.classes} {params.args}"
        " --num-workers {params.workers} --device {params.device} --out {output} > {log} 2>&1"
