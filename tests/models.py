"""Models for tests: the real embedded model (converted once) and a tiny random twin of it.

The tiny model keeps the real SmolLM2 config's architecture and the real tokenizer, with
small dimensions, so tests exercise the real code paths in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

CACHE = Path(os.environ.get("TUNELOOP_TEST_CACHE", Path(__file__).resolve().parent.parent / "var" / "test-cache"))
TINY_DIMENSIONS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
# vLLM's CPU attention kernels take head sizes of 32 and up (SmolLM2's own is 64).
VLLM_TINY_DIMENSIONS = {**TINY_DIMENSIONS, "hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1,
                        "head_dim": 64}


def embedded_model_dir() -> Path:
    """The real SmolLM2-135M-Instruct as safetensors, converted from the packaged GGUF once."""
    from serving.weights import EMBEDDED_FOLDER, convert_gguf, embedded_gguf

    folder = CACHE / "models" / EMBEDDED_FOLDER  # where Settings(data_dir=CACHE) looks for it
    if not (folder / "config.json").is_file():
        convert_gguf(embedded_gguf(), folder)
    return folder


def tiny_model_dir(dimensions: dict | None = None, name: str = "tiny-smollm2") -> Path:
    """A randomly initialised SmolLM2 with tiny dimensions and the real tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dimensions = dimensions or TINY_DIMENSIONS
    folder = CACHE / name
    if (folder / "config.json").is_file():
        return folder
    real = embedded_model_dir()
    config = AutoConfig.from_pretrained(real)
    for key, value in dimensions.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    staging = CACHE / ".tiny-staging"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (real / name).is_file():
            shutil.copy(real / name, staging / name)
    (staging / "tuneloop-tiny.json").write_text(json.dumps(dimensions))
    staging.replace(folder)
    return folder


def vllm_tiny_model_dir() -> Path:
    """The tiny twin with head sizes vLLM's CPU kernels take."""
    return tiny_model_dir(VLLM_TINY_DIMENSIONS, "tiny-smollm2-h64")
