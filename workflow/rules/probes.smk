# MLP probes: the post-projection probe per setting (Table 2) and the image-only probe (Table 3).


rule train_probe_post:
    input:
        train=rules.extract_features.output.train,
        test=rules.extract_features.output.test,
        classes=rules.prepare_dataset.output.classes,
    output:
        predictions=f"{RESULTS}/probes/{{model}}/{{dataset}}/post/{{setting}}/seed{{seed}}.csv",
        summary=f"{RESULTS}/probes/{{model}}/{{dataset}}/post/{{setting}}/seed{{seed}}.json",
    log:
        log_path("train_probe_post", "{model}", "{dataset}", "{setting}", "seed{seed}"),
    group:
        slurm_group(CPU_GROUP)
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        args=probe_args("post"),
        feature=config_value("probes.post.feature", "post"),
        device=lambda wc: model_device(wc.model),
        f1_classes=config_value("metrics.f1_classes", "true"),
    shell:
        "projection-probe train-probe --train {input.train} --test {input.test} --classes {input.classes}"
        " --feature {params.feature} {params.args} --seed {wildcards.seed} --device {params.device}"
        " --f1-classes {params.f1_classes}"
        " --threads {threads} --out-predictions {output.predictions} --out-json {output.summary} > {log} 2>&1"


rule train_probe_image_only:
    input:
        # Pre-projection vectors do not depend on the setting (the vision tower is frozen throughout), nor
        # on the model beyond its tower: the models of one tower share this probe (`vision_owner`).
        train=f"{RESULTS}/features/{{model}}/{{dataset}}/original/seed{{seed}}/train.safetensors",
        test=f"{RESULTS}/features/{{model}}/{{dataset}}/original/seed{{seed}}/test.safetensors",
        classes=rules.prepare_dataset.output.classes,
    output:
        predictions=f"{RESULTS}/probes/{{model}}/{{dataset}}/image_only/seed{{seed}}.csv",
        summary=f"{RESULTS}/probes/{{model}}/{{dataset}}/image_only/seed{{seed}}.json",
    log:
        log_path("train_probe_image_only", "{model}", "{dataset}", "seed{seed}"),
    group:
        slurm_group(CPU_GROUP)
    conda:
        CONDA_ENV
    threads: THREADS
    params:
        args=probe_args("image_only"),
        feature=config_value("probes.image_only.feature", "pooled"),
        device=lambda wc: model_device(wc.model),
        f1_classes=config_value("metrics.f1_classes", "true"),
    shell:
        "projection-probe train-probe --train {input.train} --test {input.test} --classes {input.classes}"
        " --feature {params.feature} {params.args} --seed {wildcards.seed} --device {params.device}"
        " --f1-classes {params.f1_classes}"
        " --threads {threads} --out-predictions {output.predictions} --out-json {output.summary} > {log} 2>&1"
