"""Settings turned into each package's own config: what the composition layer hands down.

Packages never import `tuneloop`; they declare what they need (a small frozen dataclass)
and this module builds it from the one `Settings`. The jobs' configs are in `tuneloop/jobs.py`.
"""

from __future__ import annotations

from plugins.config import PluginSettings, RagCommandsConfig
from tuneloop.settings import Settings


def plugin_settings(settings: Settings) -> PluginSettings:
    """What plugins (their hooks and `tuneloop plugins`) may read: no secrets, no database URL."""
    return PluginSettings(
        environment=settings.environment,
        system_prompt=settings.system_prompt,
        plugins_disabled=tuple(settings.plugins_disabled),
        plugins_fail_closed=tuple(settings.plugins_fail_closed),
        guardrails_config=settings.guardrails_config,
        rag_dir=settings.rag_dir,
        rag_share=settings.rag_share,
        rag_always=settings.rag_always,
        rag_top_k=settings.rag_top_k,
    )


def rag_commands_config(settings: Settings) -> RagCommandsConfig:
    return RagCommandsConfig(rag_dir=settings.rag_dir, database_url=settings.database_url)
