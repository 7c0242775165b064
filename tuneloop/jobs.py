"""Settings turned into what the jobs (trainer, scheduler) take, so they never import tuneloop."""

from __future__ import annotations

from trainer.gate import GateThresholds
from trainer.nightly import Environment
from tuneloop.settings import EMBEDDED_MODEL, Settings


def training_environment(settings: Settings) -> Environment:
    from serving.weights import resolve_model

    return Environment(
        database_url=settings.database_url,
        data_dir=settings.data_dir,
        model_path=resolve_model(settings.model, settings.models_dir, EMBEDDED_MODEL),
        system_prompt=settings.system_prompt,
        gate=GateThresholds(settings.gate_min_pair_accuracy, settings.gate_min_win_rate),
        device=settings.device,
    )
