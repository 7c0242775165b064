"""The Slack app over Socket Mode: a real websocket to a local Slack end, a local Web API.

The app connects out (`apps.connections.open` hands it the websocket's address), acks each
envelope over the socket, and answers through the Web API as it does in HTTP mode.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from slack_sdk.errors import SlackApiError
from sqlmodel import Session, select

from store.models import Response
from tests.slack_api import FakeSlack, FakeSocketMode, dm, event_body, events_envelope, signed_headers

ALICE = "U0ALICE"


@pytest.fixture
def socket():
    with FakeSocketMode() as fake:
        yield fake


@pytest.fixture
def slack(socket):
    with FakeSlack(ws_url=socket.url) as fake:  # apps.connections.open hands out the socket's address
        yield fake


def socket_mode_app(settings, tiny_engine, slack):  # noqa: ANN001, ANN201
    from tuneloop.app import create_app

    settings.slack_bot_token, settings.slack_app_token = "xoxb-test", "xapp-test"  # no signing secret
    settings.slack_socket_mode, settings.slack_api_url = True, slack.url
    return TestClient(create_app(settings, engine=tiny_engine))


@pytest.fixture
def app(settings, tiny_engine, slack) -> TestClient:
    with socket_mode_app(settings, tiny_engine, slack) as client:
        yield client


def test_a_direct_message_over_socket_mode_is_acked_answered_and_stored(app, slack, socket):
    assert slack.calls_to("apps.connections.open")  # it asked where to connect

    socket.send(events_envelope(event_body(dm("What is WAL?"), "EvSock1"), "env-1"))

    assert socket.wait_for_ack("env-1") == {"envelope_id": "env-1"}
    posted = slack.wait_for("chat.postMessage")
    assert posted["channel"] == f"D{ALICE}" and posted["thread_ts"] == "1700000100.000100"
    final = slack.wait_for("chat.update", lambda a: any(b.get("type") == "actions" for b in a.get("blocks") or []))
    assert final["ts"] == "1700000000.000001"  # the placeholder it posted, now finished
    buttons = [e["action_id"] for b in final["blocks"] if b.get("type") == "actions" for e in b["elements"]]
    assert {"tl_thumb_up", "tl_thumb_down"} <= set(buttons)
    with Session(app.app.state.database) as session:
        (response,) = session.exec(select(Response)).all()
    assert final["blocks"][0]["text"]["text"] == response.text


def test_socket_mode_takes_nothing_over_http(app, slack):
    body = event_body(dm("hi"), "EvHttp")
    # Even a correctly signed request: in Socket Mode there is no signing secret to check it with.
    assert app.post("/slack/events", content=body, headers=signed_headers(body, "application/json")).status_code == 404
    assert not slack.calls_to("chat.postMessage")


def test_a_refused_app_token_stops_start_up_rather_than_hanging_it(settings, tiny_engine, slack, socket):
    slack.fail("apps.connections.open", "invalid_auth")
    with pytest.raises(SlackApiError, match="invalid_auth"), socket_mode_app(settings, tiny_engine, slack):
        pass
    assert not socket.connected.is_set()
