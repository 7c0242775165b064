"""`tuneloop rag index DIR` and `tuneloop rag report`: the document index and the scoreboard.

The top-level CLI mounts `make_rag_app(...)` as `tuneloop rag`, handing it how to get the
commands' config when one runs. Heavy imports happen inside the commands, so
`tuneloop --help` stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import typer

from plugins.config import RagCommandsConfig


def make_rag_app(config: Callable[[], RagCommandsConfig]) -> typer.Typer:
    rag_app = typer.Typer(help="Answers with retrieved documents: build the index, read the scoreboard.",
                          no_args_is_help=True)

    @rag_app.command("index")
    def index_command(
        folder: Path = typer.Argument(..., exists=True, file_okay=False, dir_okay=True, readable=True,
                                      help="Markdown, text, HTML and PDF files, read recursively"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar while embedding"),
    ) -> None:
        """Index a folder of documents; indexing the same folder again replaces its earlier chunks."""
        from plugins.rag import store

        rag_dir = config().rag_dir
        try:
            result = store.index(folder, rag_dir, progress=progress)
        except store.IndexBusy as error:
            typer.secho(str(error), fg="red", err=True)
            raise typer.Exit(1) from error
        for path, reason in result.skipped:
            typer.echo(f"skipped {path}: {reason}", err=True)
        typer.echo(f"indexed {result.chunks} chunks from {result.documents} documents of {result.folder} "
                   f"into {rag_dir} ({result.total_chunks} chunks in all)")

    @rag_app.command("report")
    def report_command(as_json: bool = typer.Option(False, "--json", help="print the report as JSON")) -> None:
        """RAG's win rate against the model alone, overall and per topic, with 95% intervals."""
        from plugins.rag import scoreboard
        from store.db import make_engine
        from store.migrate import upgrade

        database = make_engine(config().database_url)
        try:
            upgrade(database)
            data = scoreboard.report(database)
        finally:
            database.dispose()
        typer.echo(json.dumps(data, indent=2) if as_json else scoreboard.render(data))

    return rag_app
