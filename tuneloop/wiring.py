"""Settings turned into each package's own config: what the composition layer hands down.

Packages never import `tuneloop`; they declare what they need (a small frozen dataclass)
and this module builds it from the one `Settings`. The jobs' configs are in `tuneloop/jobs.py`.
"""

from __future__ import annotations

from bot.slack.config import SlackConfig
from feedback.canary import CanaryPolicy
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


def slack_config(settings: Settings) -> SlackConfig:
    """The Slack app's config; only called when `settings.slack_enabled`."""
    return SlackConfig(
        bot_token=settings.slack_bot_token,
        signing_secret=settings.slack_signing_secret,
        app_token=settings.slack_app_token,
        socket_mode=settings.slack_socket_mode,
        api_url=settings.slack_api_url,
        reviewers=tuple(settings.slack_reviewers),
        operators=tuple(settings.slack_operators),
        operators_channel=settings.slack_operators_channel,
        announce_interval=settings.slack_announce_interval,
        canary_share=settings.slack_canary_share,
        public_url=settings.public_url,
        ab_share=settings.ab_share,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
    )


def canary_policy(settings: Settings) -> CanaryPolicy:
    return CanaryPolicy(decide=settings.canary_decide, promote=settings.canary_promote,
                        false_rollback=settings.canary_false_rollback,
                        false_promotion=settings.canary_false_promotion, min_answers=settings.canary_min_answers,
                        max_choices=settings.canary_max_choices,
                        rollback_metrics=tuple(settings.canary_rollback_metrics))
