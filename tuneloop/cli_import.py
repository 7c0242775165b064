"""`tuneloop import`: feedback another tool collected (feedback/importers), scrubbed and stored."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path

import typer

from tuneloop.settings import get_settings
from tuneloop.wiring import plugin_settings


class ImportSource(str, Enum):
    openwebui = "openwebui"
    langfuse = "langfuse"
    trl = "trl"


def import_feedback(
    path: Path = typer.Argument(None, help="the export to read; none with --from langfuse reads its API"),
    source: ImportSource = typer.Option(None, "--from", help="the tool it came from; default: told by the file"),
    langfuse_host: str = typer.Option(None, envvar="LANGFUSE_HOST", help="a Langfuse server to read scores from "
                                      "(with LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY)"),
) -> None:
    """Store feedback from Open WebUI, Langfuse or TRL datasets beside tuneloop's own: deduplicated,
    redacted like every chat turn, and marked with its source."""
    from feedback.importers import ImportFormatError, store_imported
    from plugins.manager import load_plugins
    from plugins.turns import PluginHooks
    from store.db import make_engine, session_scope
    from store.migrate import upgrade

    try:
        items = _items(path, source, langfuse_host)
        settings = get_settings()
        redact = PluginHooks(load_plugins(plugin_settings(settings))).redact  # the chat turns' own scrubbing
        database = make_engine(settings.database_url)
        upgrade(database)
        with session_scope(database) as session:
            counts = store_imported(session, items, redact)
    except ImportFormatError as error:
        raise typer.BadParameter(str(error)) from None
    typer.echo(counts.summary())


def _items(path: Path | None, source: ImportSource | None, langfuse_host: str | None):  # noqa: ANN202
    from feedback.importers import ImportFormatError, langfuse, openwebui, trl

    if path is None:
        if source != ImportSource.langfuse or not langfuse_host:
            raise typer.BadParameter("give the export's path, or --from langfuse with LANGFUSE_HOST for its API")
        keys = os.environ.get("LANGFUSE_PUBLIC_KEY"), os.environ.get("LANGFUSE_SECRET_KEY")
        if not all(keys):
            raise typer.BadParameter("reading Langfuse's API needs LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY")
        return list(langfuse.read(langfuse.fetch(langfuse_host, *keys)))
    if not path.is_file():
        raise typer.BadParameter(f"{path} is not a file")
    text = path.read_text(encoding="utf-8")
    source = source or _told_by(path, text)
    if source == ImportSource.trl:
        return list(trl.read(text.splitlines(), path.name))
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ImportFormatError(f"{path.name} is not JSON ({error.msg} at line {error.lineno})") from None
    return list((openwebui if source == ImportSource.openwebui else langfuse).read(document))


def _told_by(path: Path, text: str) -> ImportSource:
    """JSON lines are a TRL dataset; a list of records with chat snapshots is Open WebUI's; scores
    (or traces holding them) are Langfuse's."""
    if path.suffix == ".jsonl":
        return ImportSource.trl
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return ImportSource.trl  # one object per line, under another suffix
    first = document[0] if isinstance(document, list) and document else None
    if isinstance(first, dict) and "snapshot" in first:
        return ImportSource.openwebui
    if (isinstance(document, dict) and "scores" in document) or (isinstance(first, dict) and "scores" in first):
        return ImportSource.langfuse
    raise typer.BadParameter(f"cannot tell which tool wrote {path.name}: give --from openwebui, langfuse or trl")
