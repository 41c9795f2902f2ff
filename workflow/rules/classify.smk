# The MLLM classifies each test split, in every configured mode (generate / constrained / likelihood).


rule classify:
    input:
        model=model_spec,
        prompts=rules.build_prompts.output.prompts,
        cache=setting_vision_cache,
        classes=rules.prepare_dataset.output.classes,
    output:
        f"{RESULTS}/predictions/{{model}}/{{dataset}}/{{setting}}/{{mode}}/seed{{seed}}.csv",
    log:
        log_path("classify", "{model}", "{dataset}", "{setting}", "{mode}", "seed{seed}"),
    group:
        slurm_group(MODEL_GROUP)
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **ONE_GPU,
    params:
        generation=lambda wc: generation_args(wc.mode),
        # A result only when answers are sampled; the command reads OPERATIONAL.classify_batch_size.
        sampling_batch_size=lambda wc: sampling_batch_size(wc.mode),
        device=lambda wc: model_device(wc.model),
        dtype=lambda wc: model_dtype(wc.model),
        remote_code=lambda wc: remote_code_flag(wc.model),
    shell:
        "projection-probe classify --model $(dirname {input.model}) --prompts {input.prompts}"
        " --vision-cache {input.cache} --classes {input.classes} --mode {wildcards.mode}"
        " --batch-size {OPERATIONAL.classify_batch_size} {OPERATIONAL.label_chunk_option} {params.generation}"
        " --seed {wildcards.seed} --device {params.device} --dtype {params.dtype} {params.remote_code}"
        " --threads {threads} --out {output} > {log} 2>&1"
