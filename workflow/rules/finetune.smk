# FT-Proj, FT-E2E and FT-LoRA per dataset and seed. A job with num_gpus > 1 launches the distributed
# run itself (accelerate launch), so a 2-GPU fine-tune is one Snakemake job that asks for 2 GPUs.


rule finetune:
    input:
        base=BASE_MODEL_SPEC,
        prompts=rules.build_prompts.output.prompts,
        cache=setting_vision_cache,
    output:
        f"{RESULTS}/models/{{dataset}}/{{setting}}/seed{{seed}}/facade.json",
    log:
        log_path("finetune", "{dataset}", "{setting}", "seed{seed}"),
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        # One job, all of its GPUs: a 2-GPU fine-tune is one Slurm job that launches accelerate.
        gpu=lambda wc: finetune_params(wc.setting)["num_gpus"],
    params:
        launcher=lambda wc: finetune_launcher(wc.setting),
        # Result keys only: the checkpoint interval and the data-loader workers come from OPERATIONAL.
        hp=lambda wc: finetune_hyperparameters(wc.setting),
        options=lambda wc: finetune_options(wc.setting, wc.seed),
        remote_code=remote_code_flag(),
    shell:
        "{params.launcher} finetune --base-model $(dirname {input.base}) --prompts {input.prompts}"
        " --vision-cache {input.cache} --setting {params.hp[kind]} {params.options}"
        " {OPERATIONAL.finetune_options} {params.remote_code} --threads {threads} --out-dir $(dirname {output})"
        " > {log} 2>&1"
