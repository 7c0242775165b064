"""The engine the settings ask for: in-process transformers, or vLLM (a fleet at
TUNELOOP_VLLM_URLS, or a local server tuneloop supervises). Serving and the nightly
evaluation both build theirs here."""

from __future__ import annotations

from pathlib import Path

from serving.engine import Engine
from tuneloop.settings import EMBEDDED_MODEL, Settings


def build_engine(settings: Settings) -> Engine:
    from serving.weights import resolve_model

    if engine_kind(settings) == "vllm":
        return vllm_engine(settings)
    from serving.transformers_engine import TransformersEngine

    path = resolve_model(settings.model, settings.models_dir, EMBEDDED_MODEL)
    return TransformersEngine(
        path,
        device=settings.device,
        max_batch_size=settings.max_batch_size,
        batch_wait_ms=settings.batch_wait_ms,
        model_name=settings.model,
        threads=settings.torch_threads or None,
    )


def engine_kind(settings: Settings) -> str:
    """The engine `auto` means here: vLLM when servers are given or its venv is installed."""
    if settings.engine != "auto":
        return settings.engine
    from serving.vllm_server import DEFAULT_PYTHON

    installed = Path(settings.vllm_python or DEFAULT_PYTHON).is_file()
    return "vllm" if settings.vllm_urls or installed else "transformers"


def vllm_engine(settings: Settings, log_name: str = "vllm.log") -> Engine:
    """vLLM servers at TUNELOOP_VLLM_URLS, or, with none, a local one this process supervises."""
    from serving.vllm_engine import VLLMEngine

    common = {"api_key": settings.vllm_api_key, "timeout_s": settings.vllm_timeout_s, "model_name": settings.model}
    if settings.vllm_urls:
        return VLLMEngine(settings.vllm_urls, **common)
    from serving.vllm_server import DEFAULT_PYTHON, VLLMServer, VLLMServerConfig
    from serving.weights import resolve_model

    config = VLLMServerConfig(
        model=resolve_model(settings.model, settings.models_dir, EMBEDDED_MODEL),
        python=str(settings.vllm_python or DEFAULT_PYTHON), max_loras=settings.vllm_max_loras,
        max_lora_rank=settings.vllm_max_lora_rank, max_model_len=settings.vllm_max_model_len,
        api_key=settings.vllm_api_key)
    return VLLMEngine(server=VLLMServer(config, log_path=settings.data_dir / log_name), **common)
