"""The `tuneloop` command. Heavy imports (torch, transformers) stay inside the commands."""

from __future__ import annotations

import logging
import os
from enum import Enum
from pathlib import Path

import typer
from pydantic import ValidationError

from plugins.cli import make_plugins_app
from plugins.rag.cli import make_rag_app
from tuneloop.cli_import import import_feedback
from tuneloop.cli_operator import releases_app, users_app
from tuneloop.settings import EMBEDDED_MODEL, Settings, get_settings
from tuneloop.wiring import plugin_settings, rag_commands_config

app = typer.Typer(help="tuneloop: a self-hosted assistant that learns from its users.", no_args_is_help=True)
db_app = typer.Typer(help="The feedback store's schema.", no_args_is_help=True)
model_app = typer.Typer(help="The chat model's weights.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.add_typer(releases_app, name="releases")
app.add_typer(users_app, name="users")
app.command(name="import")(import_feedback)
# Commands that belong to a plugin get their config from here, read when one runs.
app.add_typer(make_plugins_app(lambda: plugin_settings(get_settings())), name="plugins")
app.add_typer(make_rag_app(lambda: rag_commands_config(get_settings())), name="rag")


class ExportFormat(str, Enum):
    dpo = "dpo"
    kto = "kto"
    sft = "sft"


# Shared by `serve` and `slack`, which run the same service.
HOST = typer.Option(None, help="defaults to TUNELOOP_HOST (127.0.0.1)")
PORT = typer.Option(None, help="defaults to TUNELOOP_PORT (8000)")
NIGHTLY = typer.Option(None, help="HH:MM: run `tuneloop train` then each night (TUNELOOP_NIGHTLY_AT)")
ENGINE = typer.Option(None, help="transformers (in-process), vllm (TUNELOOP_VLLM_URLS, or a local server "
                                 "tuneloop starts) or auto (vllm where `make vllm` installed it); defaults to "
                                 "TUNELOOP_ENGINE (auto)")


@app.command()
def serve(host: str = HOST, port: int = PORT, nightly: str = NIGHTLY, engine: str = ENGINE) -> None:
    """Run the chat service: widget at /, OpenAI API at /v1, feedback API at /api/feedback."""
    _serve(get_settings(), host, port, nightly, engine)


@app.command()
def slack(
    socket: bool = typer.Option(False, "--socket", help="connect to Slack over Socket Mode: no public URL needed"),
    host: str = HOST,
    port: int = PORT,
    nightly: str = NIGHTLY,
) -> None:
    """Run the service with the Slack app connected over Socket Mode (TUNELOOP_SLACK_APP_TOKEN)."""
    if not socket:
        typer.secho("The Slack app's HTTP mode is part of `tuneloop serve`: it is mounted at /slack/events when "
                    "TUNELOOP_SLACK_BOT_TOKEN and TUNELOOP_SLACK_SIGNING_SECRET are set. For Socket Mode run "
                    "`tuneloop slack --socket`.", fg="red", err=True)
        raise typer.Exit(2)
    # Through the environment, so `tuneloop train` (the nightly job's child process) reads the same settings.
    os.environ["TUNELOOP_SLACK_SOCKET_MODE"] = "true"
    get_settings.cache_clear()
    try:
        settings = get_settings()
    except ValidationError as error:  # a token that is missing or malformed, in the settings' own words
        messages = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise typer.BadParameter(messages, param_hint="--socket") from error
    tokens = {"TUNELOOP_SLACK_BOT_TOKEN": (settings.slack_bot_token, "the xoxb-... bot token"),
              "TUNELOOP_SLACK_APP_TOKEN": (settings.slack_app_token, "an xapp-... token with connections:write")}
    missing = [f"{name} ({what})" for name, (value, what) in tokens.items() if not value]
    if missing:
        raise typer.BadParameter(f"Socket Mode needs {' and '.join(missing)}", param_hint="--socket")
    _serve(settings, host, port, nightly)


def _log_to_stderr() -> None:
    """The long-running commands (serve, train, tune) log in one format (TUNELOOP_LOG_FORMAT)."""
    from tuneloop.observability import configure_logging

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)


def _serve(settings: Settings, host: str | None, port: int | None, nightly: str | None,
           engine: str | None = None) -> None:
    import uvicorn

    from tuneloop.app import create_app

    # The options win over the environment: a copy with them, so the settings read are never changed.
    chosen = {"host": host or settings.host, "port": port or settings.port}
    if nightly:
        from trainer.schedule import parse_hhmm

        try:
            parse_hhmm(nightly)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--nightly") from error
        chosen["nightly_at"] = nightly
    if engine:
        if engine not in ("auto", "transformers", "vllm"):
            raise typer.BadParameter(f"auto, transformers or vllm, not {engine!r}", param_hint="--engine")
        chosen["engine"] = engine
    settings = settings.model_copy(update=chosen)
    _log_to_stderr()
    # log_config=None: uvicorn's own loggers go through the handler above, in its format.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema up to date (the service also does this on start)."""
    from store.db import make_engine
    from store.migrate import current_revision, upgrade

    engine = make_engine(get_settings().database_url)
    upgrade(engine)
    typer.echo(f"database at revision {current_revision(engine)}")


@model_app.command("prepare")
def model_prepare() -> None:
    """Convert the embedded model to safetensors now rather than on first start."""
    from serving.weights import resolve_model

    settings = get_settings()
    typer.echo(resolve_model(settings.model, settings.models_dir, EMBEDDED_MODEL))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def train(ctx: typer.Context) -> None:
    """Train a candidate release from stored feedback on a LoRA adapter (--recipe auto, dpo, kto, sft+dpo,
    rm+grpo or rm+ppo; --resume continues a killed run). `tuneloop train --help` lists every knob: tuneloop's
    first, then TRL's DPOConfig and transformers' TrainingArguments, then TRL's ModelConfig and each stage's."""
    from trainer.config import NightlyConfig
    from trainer.nightly import main
    from trainer.tune import apply_tuned, explicit_flags
    from tuneloop.jobs import training_environment

    config = NightlyConfig.from_args(ctx.args, prog="tuneloop train", description=train.__doc__)
    _log_to_stderr()
    settings = get_settings()
    config, tuned = apply_tuned(config, settings.data_dir, explicit_flags(ctx.args))  # defaults < tune/best.json < flags
    if tuned:
        logging.getLogger("tuneloop.trainer").info("from tune/best.json: %s", ", ".join(tuned))
    config = config.replace(judge=config.pipeline.judge or settings.judge)
    result = main(config, training_environment(settings))
    typer.echo(f"{result.status.value}: {result.message}" + (f" -> release {result.release} ({result.state.value})"
                                                              if result.release else ""))
    if result.status.value == "failed":
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def tune(
    ctx: typer.Context,
    trials: int = typer.Option(20, help="trials in this run (0: until --timeout)"),
    timeout: float = typer.Option(None, help="seconds; no trial starts after it (the running one finishes)"),
    seed: int = typer.Option(0, help="the sampler's seed"),
    storage: str = typer.Option(None, help="Optuna RDB URL (e.g. sqlite:///var/tune.db) to keep and resume the study"),
    study_name: str = typer.Option("tuneloop-dpo", help="the study's name in --storage"),
    search_learning_rate: str = typer.Option("1e-5,5e-4", help="LOW,HIGH (log scale)"),
    search_beta: str = typer.Option("0.02,0.5", help="LOW,HIGH"),
    search_lora_r: str = typer.Option("4,8,16,32", help="ranks to try (alpha keeps the alpha/r ratio)"),
    search_target_layers: str = typer.Option("attention,attention+mlp", help="LoRA targets to try"),
    search_epochs: str = typer.Option("1,3", help="LOW,HIGH"),
) -> None:
    """Search learning rate, beta, LoRA rank and targets, and epochs for `tuneloop train` (Optuna) on the stored
    feedback; the best go to DATA_DIR/tune/best.json, which `tuneloop train` starts from. Any other
    `tuneloop train` flag (e.g. --max_steps 50) fixes that knob for every trial."""
    import datasets
    from transformers.utils import logging as hf_logging

    from trainer.config import NightlyConfig
    from trainer.tune import TuneConfig, main, parse_search
    from tuneloop.jobs import training_environment

    training = NightlyConfig.from_args(ctx.args, prog="tuneloop tune")
    try:
        config = TuneConfig(
            trials=trials or None, timeout=timeout, seed=seed, storage=storage, study_name=study_name,
            learning_rate=parse_search(search_learning_rate, float), beta=parse_search(search_beta, float),
            lora_r=parse_search(search_lora_r, int), target_layers=parse_search(search_target_layers, str),
            epochs=parse_search(search_epochs, int), training=training,
        )
    except (TypeError, ValueError) as error:
        raise typer.BadParameter(str(error)) from error
    _log_to_stderr()
    datasets.disable_progress_bars()  # one bar: Optuna's, over the trials
    hf_logging.disable_progress_bar()
    result = main(config, training_environment(get_settings()))
    typer.echo(f"{result.status.value}: {result.message}")
    if result.best_path:
        typer.echo(f"wrote {result.best_path} and {result.plot_path}")
    if result.status.value == "failed":
        raise typer.Exit(1)


@app.command()
def simulate(
    users: int = typer.Option(8, help="simulated people chatting at once"),
    events: int = typer.Option(100, help="chat turns, each with its feedback"),
    judge: str = typer.Option("trainer.judges:concise", help="module:function the simulated users judge by"),
    url: str = typer.Option(None, help="the running service; default http://HOST:PORT from the settings"),
    seed: int = typer.Option(0),
) -> None:
    """Drive a running service over HTTP like real users: chat, rate and choose between answers."""
    from trainer.simulate import main as run_simulation

    settings = get_settings()
    stats = run_simulation(url or f"http://{settings.host}:{settings.port}", users, events, judge, seed)
    typer.echo(", ".join(f"{count} {name}" for name, count in sorted(stats.items())))


@app.command()
def export(
    format: ExportFormat = typer.Option(None, "--format", help="dpo: preference pairs; kto: thumbs; sft: corrections"),
    out: Path = typer.Option(None, "--out", help="the JSONL file to write"),
    hf_dataset: Path = typer.Option(None, "--hf-dataset", help="a Hugging Face datasets folder (every format, a card)"),
) -> None:
    """Write stored feedback as a dataset in TRL's format: one JSONL file, or a datasets folder."""
    from feedback.export import export as write_rows
    from feedback.export import export_hf_dataset
    from store.db import make_engine, session_scope
    from store.migrate import upgrade

    if (hf_dataset is None) == (format is None or out is None):
        raise typer.BadParameter("give --format and --out (one JSONL file), or --hf-dataset DIR")
    engine = make_engine(get_settings().database_url)
    upgrade(engine)
    with session_scope(engine) as session:
        if hf_dataset is not None:
            counts = export_hf_dataset(session, hf_dataset)
            typer.echo(f"wrote {', '.join(f'{n} {name}' for name, n in counts.items())} rows to {hf_dataset}")
            return
        count = write_rows(session, format.value, out)
    typer.echo(f"wrote {count} {format.value} rows to {out}")


if __name__ == "__main__":
    app()
