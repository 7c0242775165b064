"""What plugins are told about the deployment: a narrow, read-only view of the settings.

The composition layer (`tuneloop/wiring.py`) builds it from `Settings`; every hook's
`settings` argument is this. It holds what plugins read and nothing else: no Slack
secrets, no database URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PluginSettings:
    environment: str = "development"  # "development" or "production"
    system_prompt: str = ""  # what answers must not leak (guardrails' prompt_leak rule)
    plugins_disabled: tuple[str, ...] = ()  # names not to load (built-ins and entry points)
    plugins_fail_closed: tuple[str, ...] = ()  # checks that refuse the turn when they raise
    guardrails_config: Path | None = None  # the guardrails YAML file; None: the bundled one
    rag_dir: Path = Path("var/rag")  # the RAG vector store's folder
    rag_share: float = 0.2  # share of turns shown as RAG vs the model alone
    rag_always: bool = False  # every answer made with retrieved context, citing sources
    rag_top_k: int = 4  # chunks retrieved per turn


@dataclass(frozen=True)
class RagCommandsConfig:
    """What `tuneloop rag index` and `tuneloop rag report` need."""

    rag_dir: Path  # where `index` writes
    database_url: str  # the store `report` reads the RAG pairs' choices from
