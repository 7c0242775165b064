"""What a tuneloop plugin can do: six hooks, each registering typed objects.

A plugin is a module or object with `@hookimpl` functions named like these specs. Each
hook receives `register` and calls it with objects of the protocol named in the hook
(see `plugins/protocols.py`); its `settings` is a `PluginSettings` (`plugins/config.py`),
what plugins may read of the deployment's settings. The rest of tuneloop reaches the
objects through `Plugins` (`plugins/manager.py`), never through `pm.hook`. Built-ins (guardrails, the RAG
comparison) are written exactly like third-party plugins, which install through the
entry-point group `tuneloop`:

    [project.entry-points.tuneloop]
    my_plugin = "my_package.tuneloop_plugin"

    from plugins.hookspecs import hookimpl

    @hookimpl
    def register_output_checks(register, settings):
        register(MyCheck())
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from plugins.config import PluginSettings
from plugins.protocols import Alternative, FeedbackListener, InputCheck, OutputCheck, Redactor, RewardFunction

hookspec = pluggy.HookspecMarker("tuneloop")
hookimpl = pluggy.HookimplMarker("tuneloop")


@hookspec
def register_input_checks(register: Callable[[InputCheck], None], settings: PluginSettings) -> None:
    """Checks on the user's message before generation: pass it, rewrite it, or refuse the turn."""


@hookspec
def register_output_checks(register: Callable[[OutputCheck], None], settings: PluginSettings) -> None:
    """Checks on every answer before it is shown and stored: pass, fix, flag or refuse it."""


@hookspec
def register_alternatives(register: Callable[[Alternative], None], settings: PluginSettings) -> None:
    """Other ways to answer, put side by side with the model's own answer on A/B turns."""


@hookspec
def register_feedback_listeners(register: Callable[[FeedbackListener], None], settings: PluginSettings) -> None:
    """Reactions to stored feedback (ratings, A/B choices, corrections)."""


@hookspec
def register_reward_functions(register: Callable[[RewardFunction], None], settings: PluginSettings) -> None:
    """Reward functions for online RL in the trainer, TRL's signature: (prompts, completions) -> floats."""


@hookspec
def register_redactors(register: Callable[[Redactor], None], settings: PluginSettings) -> None:
    """Rewrites of every free text before it is stored (prompts, answers, comments, corrections)."""
