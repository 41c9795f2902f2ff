# FT-Proj, FT-E2E and FT-LoRA per dataset and seed. A job with num_gpus > 1 launches the distributed
# run itself (accelerate launch), so a 2-GPU fine-tune is one Snakemake job that asks for 2 GPUs.


rule finetune:
    input:
        base=base_model_spec,
        prompts=rules.build_prompts.output.prompts,
        cache=setting_vision_cache,
    output:
        f"{RESULTS}/models/{{model}}/{{dataset}}/{{setting}}/seed{{seed}}/facade.json",
    log:
        log_path("finetune", "{model}", "{dataset}", "{setting}", "seed{seed}"),
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        # One job, all of its GPUs: a 2-GPU fine-tune is one Slurm job that launches accelerate.
        gpu=lambda wc: finetune_params(wc.setting, wc.model)["num_gpus"],
    params:
        launcher=lambda wc: finetune_launcher(wc.setting, wc.model),
        # Result keys only: the checkpoint interval and the data-loader workers come from OPERATIONAL.
        hp=lambda wc: finetune_hyperparameters(wc.setting, wc.model),
        options=lambda wc: finetune_options(wc.setting, wc.model, wc.seed),
        remote_code=lambda wc: remote_code_flag(wc.model),
    shell:
        "{params.launcher} finetune --base-model $(dirname {input.base}) --prompts {input.prompts}"
        " --vision-cache {input.cache} --setting {params.hp[kind]} {params.options}"
        " {OPERATIONAL.finetune_options} {params.remote_code} --threads {threads} --out-dir $(dirname {output})"
        " > {log} 2>&1"
