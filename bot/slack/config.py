"""What the Slack app is told about the deployment: tokens, who is who, where to post.

The composition layer (`tuneloop/wiring.py`) builds it from the settings when Slack is on;
the Slack package never reads the settings itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SlackConfig:
    bot_token: str = field(repr=False)  # xoxb-...
    signing_secret: str = field(default="", repr=False)  # verifies requests to /slack/events (HTTP mode)
    app_token: str = field(default="", repr=False)  # xapp-..., for Socket Mode
    socket_mode: bool = False  # connect out over Socket Mode instead of taking HTTP
    api_url: str = "https://slack.com/api/"  # Slack's Web API (tests point it elsewhere)
    reviewers: tuple[str, ...] = ()  # Slack user ids given the reviewer role on contact
    operators: tuple[str, ...] = ()  # Slack user ids given the operator role on contact
    operators_channel: str = ""  # where candidate releases are announced; empty: not announced
    announce_interval: float = 5.0  # seconds between looks for candidates
    canary_share: float = 0.2  # the share of "Approve as canary"
    public_url: str = ""  # this service's base URL, for links in messages
    # How answers are made in Slack, as in the widget.
    ab_share: float = 0.2  # share of turns answered with an A/B pair
    temperature: float = 0.7
    max_tokens: int = 256
