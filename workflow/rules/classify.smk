# The MLLM classifies each test split, in every configured mode (generate / constrained / likelihood).


rule classify:
    input:
        model=model_spec,
        prompts=f"{RESULTS}/data/{{dataset}}/prompts_seed{{seed}}.jsonl",
        cache=setting_vision_cache,
        classes=f"{RESULTS}/data/{{dataset}}/classes.json",
    output:
        f"{RESULTS}/predictions/{{dataset}}/{{setting}}/{{mode}}/seed{{seed}}.csv",
    params:
        batch_size=config["classify"].get("batch_size", 16),
        # Generate mode only. `auto` (the default) leaves the CLI to derive it from the tokenized classes.
        max_new_tokens=lambda wc: (f"--max-new-tokens {classify_max_new_tokens()}"
                                   if wc.mode == "generate" and classify_max_new_tokens() != "auto" else ""),
        temperature=config["classify"].get("temperature", 0.0),
        device=MODEL.get("device", "cpu"),
        dtype=MODEL.get("dtype", "float32"),
        remote_code="--trust-remote-code" if MODEL.get("trust_remote_code", False) else "",
        # Only when not the default, so that configs without the key keep their params. `exact` reads
        # the whole answer as the authors did, so it does not stop at the first newline either.
        # Only `generate` reads free text, so only its jobs see the key.
        parser=lambda wc: ("--parser exact --no-stop-at-newline" if wc.mode == "generate"
                           and config["classify"].get("parser", "substring") == "exact" else ""),
        several_classes=lambda wc: ("--several-classes first" if wc.mode == "generate"
                                    and config["classify"].get("several_classes", "invalid") == "first" else ""),
    # One GPU (Slurm: --gpus=1). Locally the resource is unbounded unless --resources gpu=N.
    resources:
        gpu=1,
    threads: THREADS
    conda:
        CONDA_ENV
    log:
        log_path("classify", "{dataset}", "{setting}", "{mode}", "seed{seed}"),
    shell:
        "projection-probe classify --model $(dirname {input.model}) --prompts {input.prompts}"
        " --vision-cache {input.cache} --classes {input.classes} --mode {wildcards.mode}"
        " --batch-size {params.batch_size} {params.max_new_tokens}"
        " --temperature {params.temperature} --seed {wildcards.seed} --device {params.device}"
        " --dtype {params.dtype} {params.remote_code} {params.parser} {params.several_classes} {LABEL_CHUNK_OPTION}"
        " --threads {threads} --out {output} > {log} 2>&1"
