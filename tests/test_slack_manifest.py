"""The Slack app manifest asks for what the code uses: every event, command and Web API method.

What the listeners register is read from the code itself, so a new listener that the
manifest does not subscribe to (and Slack would never deliver) fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot.slack import listeners

SLACK = Path(__file__).parent.parent / "bot" / "slack"
# The bot scope each Web API method needs (https://api.slack.com/methods); None: no scope.
METHOD_SCOPES = {"chat.postMessage": "chat:write", "chat.update": "chat:write", "chat.postEphemeral": "chat:write",
                 "views.open": None}


class Registrations:
    """Stands in for the bolt app and records what the listener modules register."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {"event": set(), "command": set(), "action": set(), "view": set()}

    def __getattr__(self, kind: str):  # noqa: ANN204 - app.event, app.command, ...
        assert kind in self.seen, f"listeners of kind {kind!r}: teach this test and the manifest about them"

        def register(name: str, *args: object, **kwargs: object):  # noqa: ANN202
            self.seen[kind].add(name)
            return lambda listener: listener

        return register


def manifest() -> dict:
    return yaml.safe_load((SLACK / "manifest.yaml").read_text())


def registered() -> dict[str, set[str]]:
    app = Registrations()
    listeners.register(app)
    return app.seen


def test_every_event_and_command_a_listener_handles_is_in_the_manifest():
    found, settings = registered(), manifest()["settings"]
    bot_events = settings["event_subscriptions"]["bot_events"]
    assert found["event"] == {"message", "app_mention"}  # what this test was written against
    for event in found["event"]:  # "message" arrives as message.im, message.channels, ...
        assert any(e == event or e.startswith(f"{event}.") for e in bot_events), f"{event} is not subscribed"
    commands = {c["command"]: c for c in manifest()["features"]["slash_commands"]}
    assert found["command"] <= set(commands)
    assert commands["/tuneloop"]["usage_hint"] == "review"
    assert found["action"] and found["view"] and settings["interactivity"]["is_enabled"]


def test_the_scopes_cover_the_events_commands_and_methods_used():
    scopes = set(manifest()["oauth_config"]["scopes"]["bot"])
    bot_events = manifest()["settings"]["event_subscriptions"]["bot_events"]
    event_scopes = {"app_mention": "app_mentions:read", "message.im": "im:history"}
    assert {event_scopes[e] for e in bot_events} <= scopes
    assert "commands" in scopes
    source = "\n".join(path.read_text() for path in SLACK.rglob("*.py"))
    methods = set(re.findall(r"call\(\s*(?:self\.)?client,\s*\"([\w.]+)\"", source))
    assert {"chat.postMessage", "chat.update"} <= methods  # the search finds the calls
    assert methods <= set(METHOD_SCOPES), f"the scope of {methods - set(METHOD_SCOPES)} is unknown to this test"
    assert {METHOD_SCOPES[m] for m in methods} - {None} <= scopes


def test_every_request_url_is_the_one_route_and_socket_mode_is_off():
    settings, (command,) = manifest()["settings"], manifest()["features"]["slash_commands"]
    urls = {settings["event_subscriptions"]["request_url"], settings["interactivity"]["request_url"], command["url"]}
    assert urls == {"https://YOUR-HOST/slack/events"}  # bot/slack/app.py mounts /slack/events
    assert settings["socket_mode_enabled"] is False
    assert manifest()["features"]["bot_user"]["display_name"] == "tuneloop"
