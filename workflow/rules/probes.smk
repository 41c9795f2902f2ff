# MLP probes: the post-projection probe per setting (Table 2) and the image-only probe (Table 3).


def probe_args(kind):
    p = config["probes"][kind]
    args = (f"--hidden {','.join(str(h) for h in p['hidden'])} --lr {p['lr']} --batch-size {p['batch_size']}"
            f" --max-epochs {p['max_epochs']} --patience {p['patience']} --val-fraction {p['val_fraction']}"
            f" --val-source {p['val_source']}")
    # Flags only when set, so that configs without these keys keep their params (and their results).
    args += " --standardize" if p.get("standardize") else ""
    return args + ("" if p.get("restore_best", True) else " --last-epoch")


rule train_probe_post:
    input:
        train=f"{RESULTS}/features/{{dataset}}/{{setting}}/seed{{seed}}/train.safetensors",
        test=f"{RESULTS}/features/{{dataset}}/{{setting}}/seed{{seed}}/test.safetensors",
        classes=f"{RESULTS}/data/{{dataset}}/classes.json",
    output:
        predictions=f"{RESULTS}/probes/{{dataset}}/post/{{setting}}/seed{{seed}}.csv",
        summary=f"{RESULTS}/probes/{{dataset}}/post/{{setting}}/seed{{seed}}.json",
    params:
        args=probe_args("post"),
        feature=config["probes"]["post"].get("feature", "post"),
        device=MODEL.get("device", "cpu"),
        f1_classes=config.get("metrics", {}).get("f1_classes", "true"),
    threads: THREADS
    conda:
        CONDA_ENV
    log:
        log_path("train_probe_post", "{dataset}", "{setting}", "seed{seed}"),
    shell:
        "projection-probe train-probe --train {input.train} --test {input.test} --classes {input.classes}"
        " --feature {params.feature} {params.args} --seed {wildcards.seed} --device {params.device}"
        " --f1-classes {params.f1_classes}"
        " --threads {threads} --out-predictions {output.predictions} --out-json {output.summary} > {log} 2>&1"


rule train_probe_image_only:
    input:
        # Pre-projection vectors do not depend on the setting (the vision tower is frozen throughout).
        train=f"{RESULTS}/features/{{dataset}}/original/seed{{seed}}/train.safetensors",
        test=f"{RESULTS}/features/{{dataset}}/original/seed{{seed}}/test.safetensors",
        classes=f"{RESULTS}/data/{{dataset}}/classes.json",
    output:
        predictions=f"{RESULTS}/probes/{{dataset}}/image_only/seed{{seed}}.csv",
        summary=f"{RESULTS}/probes/{{dataset}}/image_only/seed{{seed}}.json",
    params:
        args=probe_args("image_only"),
        feature=config["probes"]["image_only"].get("feature", "pooled"),
        device=MODEL.get("device", "cpu"),
        f1_classes=config.get("metrics", {}).get("f1_classes", "true"),
    threads: THREADS
    conda:
        CONDA_ENV
    log:
        log_path("train_probe_image_only", "{dataset}", "seed{seed}"),
    shell:
        "projection-probe train-probe --train {input.train} --test {input.test} --classes {input.classes}"
        " --feature {params.feature} {params.args} --seed {wildcards.seed} --device {params.device}"
        " --f1-classes {params.f1_classes}"
        " --threads {threads} --out-predictions {output.predictions} --out-json {output.summary} > {log} 2>&1"
