"""The `tuneloop` command. Heavy imports (torch, transformers) stay inside the commands."""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

import typer

from tuneloop.cli_releases import releases_app, users_app
from tuneloop.settings import EMBEDDED_MODEL, get_settings

app = typer.Typer(help="tuneloop: a self-hosted assistant that learns from its users.", no_args_is_help=True)
db_app = typer.Typer(help="The feedback store's schema.", no_args_is_help=True)
model_app = typer.Typer(help="The chat model's weights.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.add_typer(releases_app, name="releases")
app.add_typer(users_app, name="users")


class ExportFormat(str, Enum):
    dpo = "dpo"
    kto = "kto"
    sft = "sft"


@app.command()
def serve(
    host: str = typer.Option(None, help="defaults to TUNELOOP_HOST (127.0.0.1)"),
    port: int = typer.Option(None, help="defaults to TUNELOOP_PORT (8000)"),
    nightly: str = typer.Option(None, help="HH:MM: run `tuneloop train` then each night (TUNELOOP_NIGHTLY_AT)"),
) -> None:
    """Run the chat service: widget at /, OpenAI API at /v1, feedback API at /api/feedback."""
    import uvicorn

    from tuneloop.app import create_app

    settings = get_settings()
    settings.host, settings.port = host or settings.host, port or settings.port
    if nightly:
        from trainer.schedule import parse_hhmm

        try:
            parse_hhmm(nightly)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--nightly") from error
        settings.nightly_at = nightly
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema up to date (the service also does this on start)."""
    from feedback.db import make_engine
    from feedback.migrate import current_revision, upgrade

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
    """Train a candidate release from stored feedback (DPO on a LoRA adapter). `tuneloop train --help` lists
    every knob: tuneloop's first, then TRL's DPOConfig and transformers' TrainingArguments."""
    from transformers import HfArgumentParser

    from trainer.config import NightlyConfig
    from trainer.nightly import main
    from tuneloop.jobs import training_environment

    parser = HfArgumentParser(NightlyConfig, prog="tuneloop train", description=train.__doc__)
    (config,) = parser.parse_args_into_dataclasses(args=ctx.args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    config.judge = config.judge or settings.judge
    result = main(config, training_environment(settings))
    typer.echo(f"{result.status.value}: {result.message}" + (f" -> release {result.release} ({result.state.value})"
                                                              if result.release else ""))
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
    format: ExportFormat = typer.Option(..., "--format", help="dpo: preference pairs; kto: thumbs; sft: corrections"),
    out: Path = typer.Option(..., "--out", help="the JSONL file to write"),
) -> None:
    """Write stored feedback as a dataset in TRL's format."""
    from feedback.db import make_engine, session_scope
    from feedback.export import export as write_rows
    from feedback.migrate import upgrade

    engine = make_engine(get_settings().database_url)
    upgrade(engine)
    with session_scope(engine) as session:
        count = write_rows(session, format.value, out)
    typer.echo(f"wrote {count} {format.value} rows to {out}")


if __name__ == "__main__":
    app()
