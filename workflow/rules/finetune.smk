# FT-Proj, FT-E2E and FT-LoRA per dataset and seed. A job with num_gpus > 1 launches the distributed
# run itself (accelerate launch), so a 2-GPU fine-tune is one Snakemake job that asks for 2 GPUs.


def finetune_launcher(setting):
    params = finetune_params(setting)
    if params["num_gpus"] > 1:
        config_arg = f" --config_file {shlex.quote(params['accelerate_config'])}" if params["accelerate_config"] else ""
        return f"accelerate launch --num_processes {params['num_gpus']}{config_arg} -m projection_probe.cli"
    return "projection-probe"


def optional_int(value):
    return 0 if value is None else value


rule finetune:
    input:
        base=f"{RESULTS}/models/base/facade.json",
        prompts=f"{RESULTS}/data/{{dataset}}/prompts_seed{{seed}}.jsonl",
        cache=setting_vision_cache,
    output:
        f"{RESULTS}/models/{{dataset}}/{{setting}}/seed{{seed}}/facade.json",
    params:
        launcher=lambda wc: finetune_launcher(wc.setting),
        hp=lambda wc: finetune_params(wc.setting),
        optim=lambda wc: shlex.quote(str(finetune_params(wc.setting)["optim"])),
        max_examples=lambda wc: optional_int(finetune_params(wc.setting)["max_examples"]),
        bf16=lambda wc: "--bf16" if finetune_params(wc.setting)["bf16"] else "--no-bf16",
        checkpointing=lambda wc: ("--gradient-checkpointing" if finetune_params(wc.setting)["gradient_checkpointing"]
                                  else "--no-gradient-checkpointing"),
        template=lambda wc: finetune_params(wc.setting).get("template", MODEL.get("template", "v1")),
        # Training keeps float32 master weights by default (bf16 autocast via --bf16), as LLaVA's
        # DeepSpeed runs do; pure-bf16 weights lose most updates at lr 2e-5.
        model_dtype=lambda wc: finetune_params(wc.setting)["model_dtype"],
        workers=config.get("features", {}).get("num_workers", 0),
        remote_code="--trust-remote-code" if MODEL.get("trust_remote_code", False) else "",
    threads: THREADS
    resources:
        # One job, all of its GPUs: a 2-GPU fine-tune is one Slurm job that launches accelerate.
        gpu=lambda wc: finetune_params(wc.setting)["num_gpus"],
    conda:
        CONDA_ENV
    log:
        log_path("finetune", "{dataset}", "{setting}", "seed{seed}"),
    shell:
        "{params.launcher} finetune --base-model $(dirname {input.base}) --prompts {input.prompts}"
        " --vision-cache {input.cache} --setting {params.hp[kind]} --lr {params.hp[lr]}"
        " --effective-batch {params.hp[effective_batch]} --per-device-batch {params.hp[per_device_batch]}"
        " --epochs {params.hp[epochs]} --warmup-ratio {params.hp[warmup_ratio]}"
        " --weight-decay {params.hp[weight_decay]} --lr-scheduler {params.hp[lr_scheduler]}"
        " --max-grad-norm {params.hp[max_grad_norm]} --seed {wildcards.seed} {params.bf16} {params.checkpointing}"
        " --checkpoint-every-steps {params.hp[checkpoint_every_steps]} --max-examples {params.max_examples}"
        " --lora-r {params.hp[lora_r]} --lora-alpha {params.hp[lora_alpha]} --lora-dropout {params.hp[lora_dropout]}"
        " --projector-lr {params.hp[projector_lr]} --optim {params.optim} --template {params.template}"
        " --model-dtype {params.model_dtype} --num-workers {params.workers} {params.remote_code} --threads {threads}"
        " --out-dir $(dirname {output}) > {log} 2>&1"
