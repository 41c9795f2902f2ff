"""The real Llama-1/2 SentencePiece tokenizer (Vicuna's, LLaVA-1.5's), fetched once for tests.

llama.cpp ships it as a vocabulary-only GGUF file inside the llama-cpp-python source distribution on
PyPI. The file is never committed (the Llama license applies to it): it is extracted from the sdist
into a cache folder outside the repository (`$XDG_CACHE_HOME/projection-probe/llama-spm`, else
`~/.cache/projection-probe/llama-spm`) and reused from there.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VOCAB_FILE = "ggml-vocab-llama-spm.gguf"
VOCAB_MEMBER_SUFFIX = "/vendor/llama.cpp/models/" + VOCAB_FILE
SDIST_PACKAGE = "llama-cpp-python"


class VocabUnavailable(RuntimeError):
    """The vocabulary could not be fetched (no registry, no pip, no file in the sdist)."""


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "projection-probe" / "llama-spm"


def fetch_llama_vocab(folder: str | Path | None = None, timeout_s: int = 600) -> Path:
    """The folder holding `ggml-vocab-llama-spm.gguf`, downloading the sdist only when it is absent."""
    folder = Path(folder) if folder is not None else cache_dir()
    target = folder / VOCAB_FILE
    if target.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               "--disable-pip-version-check", "-d", tmp, SDIST_PACKAGE]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise VocabUnavailable(f"`pip download {SDIST_PACKAGE}` failed: {exc}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise VocabUnavailable(f"`pip download {SDIST_PACKAGE}` could not reach the package registry: {tail[0]}")
        sdists = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if not sdists:
            raise VocabUnavailable(f"`pip download {SDIST_PACKAGE}` gave no source distribution in {tmp}")
        with tarfile.open(sdists[-1]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(VOCAB_MEMBER_SUFFIX)), None)
            if member is None:
                raise VocabUnavailable(f"{sdists[-1].name} holds no {VOCAB_MEMBER_SUFFIX}")
            partial = Path(tmp) / VOCAB_FILE
            with tar.extractfile(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
        # A rename, so that a cut-off fetch never leaves a file that looks complete.
        os.replace(partial, target)
    return folder


def load_llama_tokenizer(folder: str | Path):
    """The Llama tokenizer from the GGUF vocabulary, with a pad token and LLaVA-hf's `<image>` token
    added on top of the 32,000 SentencePiece pieces (`llava-hf/llava-1.5-7b-hf` has both).

    Reading the GGUF file takes seconds, so the converted tokenizer is kept beside it, per
    transformers version (the conversion is transformers' own)."""
    import transformers
    from transformers import AutoTokenizer

    converted = Path(folder) / f"converted-transformers-{transformers.__version__}"
    if (converted / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(converted))
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=VOCAB_FILE)
    tokenizer.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": ["<image>"]})
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, converted)
        except OSError:  # another process converted it first
            pass
        Path(tmp).mkdir(exist_ok=True)  # TemporaryDirectory cleans up the name it made
    return tokenizer
