"""Settings turned into what the jobs (trainer, scheduler) take, so they never import tuneloop."""

from __future__ import annotations

from trainer.gate import GateThresholds
from trainer.nightly import Environment
from tuneloop.settings import EMBEDDED_MODEL, Settings
from tuneloop.wiring import plugin_settings


def gate_thresholds(settings: Settings) -> GateThresholds:
    return GateThresholds(
        min_pair_accuracy=settings.gate_min_pair_accuracy,
        min_win_rate=settings.gate_min_win_rate,
        win_rate_bound=settings.gate_win_rate_bound,
        min_reward_pair_accuracy=settings.gate_min_reward_pair_accuracy,
        max_golden_drop=settings.gate_max_golden_drop,
        max_violation_increase=settings.gate_max_violation_increase,
        max_length_drift=settings.gate_max_length_drift,
        max_kl=settings.gate_max_kl,
    )


def answer_engine(settings: Settings):  # noqa: ANN201 - a factory, or None for in-process
    """What the nightly evaluation generates through: the serving fleet at TUNELOOP_VLLM_URLS
    (under adapter names of its own), or a vLLM server of its own; None: in-process."""
    from tuneloop.engines import engine_kind, vllm_engine

    kind = settings.eval_engine if settings.eval_engine != "auto" else engine_kind(settings)
    if kind != "vllm":
        return None
    return lambda: vllm_engine(settings, log_name="vllm-evaluation.log")


def training_environment(settings: Settings) -> Environment:
    from plugins.manager import load_plugins
    from serving.weights import resolve_model

    # Their output checks scrub data and count violations; their reward functions are for RL.
    plugins = load_plugins(plugin_settings(settings))
    return Environment(
        database_url=settings.database_url,
        data_dir=settings.data_dir,
        model_path=resolve_model(settings.model, settings.models_dir, EMBEDDED_MODEL),
        system_prompt=settings.system_prompt,
        max_tokens=settings.max_tokens,
        gate=gate_thresholds(settings),
        device=settings.device,
        output_check=plugins,
        reward_functions=plugins.reward_functions,
        answer_engine=answer_engine(settings),
    )
