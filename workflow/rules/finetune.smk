# FT-Proj, FT-E2E and FT-LoRA per dataset and seed. A job with num_gpus > 1 launches the distributed
# run itself (accelerate launch), so a 2-GPU fine-tune is one Snakemake job that asks for 2 GPUs.


rule finetune:
    input:
        base=f"{RESULTS}/models/base/facade.json",
        prompts=f"{RESULTS}/data/{{dataset}}/prompts_seed{{seed}}.jsonl",
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
        optim=lambda wc: shlex.quote(str(finetune_params(wc.setting)["optim"])),
        max_examples=lambda wc: optional_int(finetune_params(wc.setting)["max_examples"]),
        bf16=lambda wc: "--bf16" if finetune_params(wc.setting)["bf16"] else "--no-bf16",
        checkpointing=lambda wc: (
            "--gradient-checkpointing"
            if finetune_params(wc.setting)["gradient_checkpointing"]
            else "--no-gradient-checkpointing"
        ),
        remote_code=remote_code_flag(),
    shell:
        "{params.launcher} finetune --base-model $(dirname {input.base}) --prompts {input.prompts}"
        " --vision-cache {input.cache} --setting {params.hp[kind]} --lr {params.hp[lr]}"
        " --effective-batch {params.hp[effective_batch]} --per-device-batch {params.hp[per_device_batch]}"
        " --epochs {params.hp[epochs]} --warmup-ratio {params.hp[warmup_ratio]}"
        " --weight-decay {params.hp[weight_decay]} --lr-scheduler {params.hp[lr_scheduler]}"
        " --max-grad-norm {params.hp[max_grad_norm]} --seed {wildcards.seed} {params.bf16} {params.checkpointing}"
        " --checkpoint-every-steps {OPERATIONAL.checkpoint_every_steps} --max-examples {params.max_examples}"
        " --lora-r {params.hp[lora_r]} --lora-alpha {params.hp[lora_alpha]} --lora-dropout {params.hp[lora_dropout]}"
        " --projector-lr {params.hp[projector_lr]} --optim {params.optim} --template {params.hp[template]}"
        " --model-dtype {params.hp[model_dtype]} --num-workers {OPERATIONAL.num_workers} {params.remote_code}"
        " --threads {threads} --out-dir $(dirname {output}) > {log} 2>&1"
