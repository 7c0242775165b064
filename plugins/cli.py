"""`tuneloop plugins list`: what is loaded, from where, and which hooks it implements.

The top-level CLI mounts `make_plugins_app(...)` as `tuneloop plugins`, handing it how to
get the plugins' settings when a command runs.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from plugins.config import PluginSettings


def make_plugins_app(plugin_settings: Callable[[], PluginSettings]) -> typer.Typer:
    plugins_app = typer.Typer(help="Plugins: built-ins and those installed through the 'tuneloop' entry point.",
                              no_args_is_help=True)

    @plugins_app.command("list")
    def list_plugins() -> None:
        """Each loaded plugin, its source (built-in or distribution and version), and its hooks."""
        from plugins.manager import load_plugins

        settings = plugin_settings()
        loaded = load_plugins(settings).listing()
        if not loaded:
            typer.echo("No plugins loaded.")
        for plugin in loaded:
            typer.echo(f"{plugin.name:<16} {plugin.source:<40} {', '.join(plugin.hooks)}")
        if settings.plugins_disabled:
            typer.echo(f"switched off by TUNELOOP_PLUGINS_DISABLED: {', '.join(settings.plugins_disabled)}")

    return plugins_app
