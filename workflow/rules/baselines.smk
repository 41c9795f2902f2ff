# Baselines: uniform random per seed, and the encoder's own zero-shot where it has a text tower (CLIP).


rule random_baseline:
    input:
        manifest=rules.prepare_dataset.output.manifest,
        classes=rules.prepare_dataset.output.classes,
    output:
        f"{RESULTS}/baselines/{{dataset}}/random/seed{{seed}}.csv",
    log:
        log_path("random_baseline", "{dataset}", "seed{seed}"),
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "projection-probe random-baseline --manifest {input.manifest} --classes {input.classes}"
        " --seed {wildcards.seed} --out {output} > {log} 2>&1"


rule encoder_zero_shot:
    input:
        manifest=rules.prepare_dataset.output.manifest,
        classes=rules.prepare_dataset.output.classes,
    output:
        f"{RESULTS}/baselines/{{dataset}}/encoder_zero_shot.csv",
    log:
        log_path("encoder_zero_shot", "{dataset}"),
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **ONE_GPU,
    params:
        args=zero_shot_args(),
        device=DEVICE,
    shell:
        "projection-probe encoder-zero-shot --manifest {input.manifest} --classes {input.classes} {params.args}"
        " --batch-size {OPERATIONAL.zero_shot_batch_size} --num-workers {OPERATIONAL.num_workers}"
        " --device {params.device} --threads {threads} --out {output} > {log} 2>&1"
