"""The plugin manager and the typed accessors the rest of tuneloop uses.

Built-in plugins register the same way as third-party ones; third-party plugins come
from the entry-point group `tuneloop`. A plugin named in `TUNELOOP_PLUGINS_DISABLED`
is not registered at all.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from dataclasses import dataclass

import pluggy

from plugins import hookspecs
from plugins.config import PluginSettings
from plugins.protocols import (
    Alternative,
    FeedbackEvent,
    FeedbackListener,
    InputCheck,
    OutputCheck,
    Redactor,
    RewardFunction,
)

log = logging.getLogger(__name__)

# name -> module; imported only when enabled, as some pull in heavy libraries.
BUILTINS = {"guardrails": "plugins.guardrails.plugin", "rag": "plugins.rag.plugin"}
ENTRY_POINT_GROUP = "tuneloop"


@dataclass
class PluginInfo:
    name: str
    source: str  # "built-in", or "<distribution> <version> (entry point)"
    hooks: list[str]


class Plugins:
    """Everything plugins registered, as typed lists; errors of plugins are counted here."""

    def __init__(self, manager: pluggy.PluginManager, settings: PluginSettings) -> None:
        self.manager, self.settings = manager, settings
        self.errors: Counter[str] = Counter()  # by plugin object name
        self.input_checks: list[InputCheck] = self._collect("register_input_checks")
        self.output_checks: list[OutputCheck] = self._collect("register_output_checks")
        self.alternatives: list[Alternative] = self._collect("register_alternatives")
        self.feedback_listeners: list[FeedbackListener] = self._collect("register_feedback_listeners")
        self.reward_functions: list[RewardFunction] = self._collect("register_reward_functions")
        self.redactors: list[Redactor] = self._collect("register_redactors")
        for check in self.input_checks + self.output_checks:  # the only ones that can refuse a turn
            if check.name in settings.plugins_fail_closed:
                check.fail_closed = True

    def _collect(self, hook_name: str) -> list:
        found: list = []
        getattr(self.manager.hook, hook_name)(register=found.append, settings=self.settings)
        return found

    def notify_feedback(self, event: FeedbackEvent) -> None:
        for listener in self.feedback_listeners:
            try:
                listener.on_feedback(event)
            except Exception:  # a listener's failure never loses the feedback that was stored
                self.errors[listener.name] += 1
                log.exception("plugin %s failed on a %s", listener.name, event.kind)

    def listing(self) -> list[PluginInfo]:
        sources = {plugin: f"{dist.project_name} {dist.version} (entry point)"
                   for plugin, dist in self.manager.list_plugin_distinfo()}
        return [
            PluginInfo(name, sources.get(plugin, "built-in"),
                       sorted(hook.name for hook in self.manager.get_hookcallers(plugin) or []))
            for name, plugin in self.manager.list_name_plugin()
            if plugin is not None  # a blocked (switched off) name is listed with no plugin
        ]


def load_plugins(settings: PluginSettings) -> Plugins:
    manager = pluggy.PluginManager("tuneloop")
    manager.add_hookspecs(hookspecs)
    disabled = set(settings.plugins_disabled)
    for name, module in BUILTINS.items():
        if name not in disabled:
            manager.register(importlib.import_module(module), name=name)
    for name in disabled:  # keeps a disabled entry point from registering
        manager.set_blocked(name)
    manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return Plugins(manager, settings)
