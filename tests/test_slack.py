"""The Slack app over HTTP: real signed requests through the FastAPI app, a local Slack Web API.

Each test asserts what Slack would have received and what the store holds.
"""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from store.models import (
    AuditLog,
    Channel,
    Comparison,
    Conversation,
    Correction,
    Message,
    Rating,
    Release,
    ReleaseState,
    Response,
    User,
)
from tests.slack_api import (
    SIGNING_SECRET,
    FakeSlack,
    block_action,
    dm,
    event_body,
    signed_headers,
    slash_command,
    view_submission,
)

ALICE, RITA, OPAL = "U0ALICE", "U0RITA", "U0OPAL"  # an end user, a reviewer, an operator
JSON, FORM = "application/json", "application/x-www-form-urlencoded"


@pytest.fixture
def slack():
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def app(request, settings, tiny_engine, slack) -> TestClient:
    """The service with Slack on; `@pytest.mark.app_settings(name=value)` sets more before it starts
    (the Slack app is handed its config at start, so later changes to the settings are not seen)."""
    from tuneloop.app import create_app

    settings.slack_bot_token, settings.slack_signing_secret = "xoxb-test", SIGNING_SECRET
    settings.slack_api_url = slack.url
    settings.slack_reviewers, settings.slack_operators = [RITA], [OPAL]
    settings.slack_operators_channel, settings.slack_announce_interval = "C0OPS", 0.2
    marker = request.node.get_closest_marker("app_settings")
    if marker is not None:
        settings = settings.model_copy(update=marker.kwargs)
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        yield client


def post(app: TestClient, body: str, content_type: str, **headers: str):
    return app.post("/slack/events", content=body, headers={**signed_headers(body, content_type), **headers})


def rows(app: TestClient, model, *where) -> list:  # noqa: ANN001
    with Session(app.app.state.database) as session:
        return list(session.exec(select(model).where(*where)).all())


def wait_rows(app: TestClient, model, *where, count: int = 1, timeout: float = 30) -> list:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = rows(app, model, *where)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"expected {count} {model.__name__} rows, found {len(found)}")


def final_answer(slack: FakeSlack, check=lambda blocks: True) -> dict:  # noqa: ANN001
    """The chat.update that put the buttons on a finished answer."""
    def finished(args: dict) -> bool:
        return any(b.get("type") == "actions" for b in args.get("blocks") or []) and check(args["blocks"])

    return slack.wait_for("chat.update", finished)


def ask(app: TestClient, slack: FakeSlack, text: str = "What is WAL?", event_id: str = "Ev1") -> dict:
    """Alice DMs the bot; returns the message as Slack shows it once answered."""
    reply = post(app, event_body(dm(text), event_id), JSON)
    assert reply.status_code == 200
    update = final_answer(slack)
    return {"ts": update["ts"], "text": update.get("text", ""), "blocks": update["blocks"]}


def button(blocks: list[dict], action_id: str) -> str:
    return next(e["value"] for b in blocks if b.get("type") == "actions" for e in b["elements"]
                if e["action_id"] == action_id)


def context_lines(blocks: list[dict]) -> str:
    return " ".join(e["text"] for b in blocks if b.get("type") == "context" for e in b["elements"])


# ---------------------------------------------------------------- end users


def test_a_direct_message_is_answered_in_its_thread_and_stored(app, slack):
    message = ask(app, slack)

    posted = slack.wait_for("chat.postMessage")
    assert posted["channel"] == f"D{ALICE}" and posted["thread_ts"] == "1700000100.000100"
    assert message["ts"] == "1700000000.000001"  # the placeholder was edited, not a second post
    (conversation,) = rows(app, Conversation)
    assert conversation.channel == Channel.slack and conversation.external_ref.endswith(":1700000100.000100")
    (response,) = wait_rows(app, Response)
    assert button(message["blocks"], "tl_thumb_up") == str(response.id)
    assert message["blocks"][0]["text"]["text"] == response.text
    (user,) = rows(app, User, User.id == conversation.user_id)
    assert user.external_id == f"slack:{ALICE}"


def test_a_reply_in_the_thread_continues_the_conversation(app, slack):
    ask(app, slack)
    follow_up = dm("And in PostgreSQL?", ts="1700000200.000200", thread_ts="1700000100.000100")
    assert post(app, event_body(follow_up, "Ev2"), JSON).status_code == 200

    wait_rows(app, Response, count=2)
    (conversation,) = rows(app, Conversation)
    prompts = rows(app, Message, Message.conversation_id == conversation.id, Message.role == "user")
    assert [m.content for m in prompts] == ["What is WAL?", "And in PostgreSQL?"]


def test_thumbs_are_stored_changed_and_shown_and_thumbs_down_asks_why(app, slack):
    message = ask(app, slack)
    response_id = button(message["blocks"], "tl_thumb_up")

    assert post(app, block_action(ALICE, "tl_thumb_up", response_id, f"D{ALICE}", message), FORM).status_code == 200
    shown = slack.wait_for("chat.update", lambda a: ":thumbsup: <@U0ALICE>" in context_lines(a.get("blocks") or []))
    assert wait_rows(app, Rating)[0].thumb == "up"

    post(app, block_action(ALICE, "tl_thumb_down", response_id, f"D{ALICE}", {**message, "blocks": shown["blocks"]}),
         FORM)
    modal = slack.wait_for("views.open")["view"]
    redrawn = slack.wait_for("chat.update", lambda a: ":thumbsdown: <@U0ALICE>" in context_lines(a.get("blocks") or []))
    assert ":thumbsup:" not in context_lines(redrawn["blocks"])
    reply = post(app, view_submission(ALICE, modal, {
        "reason": {"value": {"type": "radio_buttons", "selected_option": {"value": "incorrect"}}},
        "comment": {"value": {"type": "plain_text_input", "value": "WAL is a log, not a lock"}},
    }), FORM)
    assert reply.status_code == 200
    (rating,) = wait_rows(app, Rating, Rating.reason == "incorrect")
    assert (rating.thumb, rating.comment) == ("down", "WAL is a log, not a lock")
    assert len(rows(app, Rating)) == 1


@pytest.mark.app_settings(ab_share=1.0)
def test_an_ab_turn_shows_two_answers_and_stores_the_choice_as_shown(app, slack):
    message = ask(app, slack)
    pair = json.loads(button(message["blocks"], "tl_compare_a_better"))
    responses = wait_rows(app, Response, count=2)
    assert {pair["a"], pair["b"]} == {str(r.id) for r in responses}
    texts = {str(r.id): r.text for r in responses}
    first_shown = pair["a"] if pair["a_position"] == 0 else pair["b"]
    assert message["blocks"][0]["text"]["text"] == f"*A*\n{texts[first_shown]}"

    post(app, block_action(ALICE, "tl_compare_a_better", json.dumps(pair), f"D{ALICE}", message), FORM)
    (comparison,) = wait_rows(app, Comparison)
    assert comparison.a_position == pair["a_position"]
    assert comparison.winner == ("a" if first_shown == pair["a"] else "b")
    slack.wait_for("chat.update", lambda a: "<@U0ALICE>: A is better" in context_lines(a.get("blocks") or []))

    post(app, block_action(ALICE, "tl_compare_tie", json.dumps(pair), f"D{ALICE}", message), FORM)
    slack.wait_for("chat.update", lambda a: "<@U0ALICE>: a tie" in context_lines(a.get("blocks") or []))
    (comparison,) = rows(app, Comparison)
    assert comparison.winner == "tie"


# ---------------------------------------------------------------- reviewers


def test_a_reviewer_gets_a_task_and_stores_a_correction(app, slack):
    message = ask(app, slack)
    response_id = button(message["blocks"], "tl_thumb_up")

    reply = post(app, slash_command(RITA, "review"), FORM)
    assert reply.status_code == 200 and "direct messages" in reply.text
    task = slack.wait_for("chat.postMessage", lambda a: a["channel"] == RITA)
    assert "What is WAL?" in json.dumps(task["blocks"])
    post(app, block_action(RITA, "tl_correct", button(task["blocks"], "tl_correct"), RITA,
                           {"ts": "1", "blocks": task["blocks"]}), FORM)
    modal = slack.wait_for("views.open", lambda a: a["view"]["callback_id"] == "tl_correction")["view"]
    post(app, view_submission(RITA, modal, {
        "text": {"value": {"type": "plain_text_input", "value": "WAL writes changes to a log first."}},
        "comment": {"value": {"type": "plain_text_input", "value": None}},
    }), FORM)

    (correction,) = wait_rows(app, Correction)
    assert str(correction.response_id) == response_id and correction.text == "WAL writes changes to a log first."
    again = post(app, slash_command(RITA, "review"), FORM)
    assert "Nothing to review" in again.text  # the one answer has been judged


def test_someone_without_the_reviewer_role_is_refused_a_task(app, slack):
    ask(app, slack)
    reply = post(app, slash_command(ALICE, "review"), FORM)
    assert reply.status_code == 200 and "Only reviewers" in reply.text
    assert not slack.calls_to("views.open")
    assert [a["channel"] for a in slack.calls_to("chat.postMessage")] == [f"D{ALICE}"]


# ---------------------------------------------------------------- operators


def test_a_candidate_is_announced_and_only_an_operator_can_approve_it(app, slack, tmp_path, tiny_model):
    from tests.adapters import add_candidate, make_adapter

    add_candidate(app.app.state.database, "r1", make_adapter(tiny_model, tmp_path / "r1"))
    announcement = slack.wait_for("chat.postMessage", lambda a: a["channel"] == "C0OPS")
    assert "Gate passed: test release" in json.dumps(announcement["blocks"])
    message = {"ts": "1700000000.000001", "blocks": announcement["blocks"]}

    post(app, block_action(ALICE, "tl_release_canary", "r1", "C0OPS", message), FORM)
    refusal = slack.wait_for("chat.postEphemeral")
    assert refusal["user"] == ALICE and "Only operators" in refusal["text"]
    assert rows(app, Release, Release.name == "r1")[0].state == ReleaseState.candidate

    post(app, block_action(OPAL, "tl_release_canary", "r1", "C0OPS", message), FORM)
    decided = slack.wait_for("chat.update", lambda a: "Approved by <@U0OPAL>" in a.get("text", ""))
    assert not any(b.get("type") == "actions" for b in decided["blocks"])
    (release,) = rows(app, Release, Release.name == "r1")
    assert release.state == ReleaseState.canary and release.canary_share == pytest.approx(0.2)
    (entry,) = rows(app, AuditLog, AuditLog.action == "release.approve")
    assert rows(app, User, User.id == entry.actor_id)[0].external_id == f"slack:{OPAL}"
    assert len(slack.calls_to("chat.postMessage")) == 1  # announced once


def test_a_failed_announcement_is_logged_and_tried_again(app, slack, tmp_path, tiny_model):
    from bot.slack import calls
    from tests.adapters import add_candidate, make_adapter

    slack.fail("chat.postMessage", "channel_not_found")
    add_candidate(app.app.state.database, "r2", make_adapter(tiny_model, tmp_path / "r2"))
    slack.wait_for("chat.postMessage", lambda a: a["channel"] == "C0OPS")
    deadline = time.monotonic() + 30
    while len(slack.calls_to("chat.postMessage")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(slack.calls_to("chat.postMessage")) == 2  # the second look posted it
    assert calls.failures["chat.postMessage: channel_not_found"] >= 1


# ---------------------------------------------------------------- robustness


def test_a_retried_event_is_answered_once(app, slack):
    body = event_body(dm("What is WAL?"), "EvRetry")
    assert post(app, body, JSON).status_code == 200
    assert post(app, body, JSON, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}).status_code == 200
    final_answer(slack)
    time.sleep(0.5)  # a second answer, if any, would have started by now

    assert len(slack.calls_to("chat.postMessage")) == 1
    assert len(rows(app, Response)) == 1 and len(rows(app, Conversation)) == 1


def test_a_retry_after_the_answer_is_not_answered_again(app, slack):
    body = event_body(dm("What is WAL?"), "EvLate")
    assert post(app, body, JSON).status_code == 200
    final_answer(slack)
    wait_for_done(app, "event:EvLate")
    assert post(app, body, JSON, **{"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "http_error"}).status_code == 200
    time.sleep(0.5)
    assert len(slack.calls_to("chat.postMessage")) == 1 and len(rows(app, Response)) == 1


def test_an_event_whose_holder_died_mid_answer_is_answered_once_in_the_message_it_had_posted(app, slack):
    import json
    from datetime import timedelta

    from bot.slack.inbox import Recovery
    from store.db import session_scope
    from store.models import SlackDelivery, utcnow

    body = event_body(dm("What is WAL?"), "EvCrash")
    placeholder = "1700000999.000100"
    # What a process killed mid-answer leaves: the event taken and its placeholder posted, never
    # finished, the lease run out.
    with session_scope(app.app.state.database) as session:
        session.add(SlackDelivery(key="event:EvCrash", body=json.loads(body), posted_ts=placeholder,
                                  lease_until=utcnow() - timedelta(seconds=1)))
    recovery = Recovery(app.app.state.slack, app.app.state.slack_services)
    assert app.portal.call(recovery.once) == 1
    answered = final_answer(slack)
    assert answered["ts"] == placeholder and slack.calls_to("chat.postMessage") == []
    wait_for_done(app, "event:EvCrash")
    assert app.portal.call(recovery.once) == 0  # done: not again
    assert post(app, body, JSON, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}).status_code == 200
    time.sleep(0.5)
    assert slack.calls_to("chat.postMessage") == [] and len(rows(app, Response)) == 1


def wait_for_done(app: TestClient, key: str, timeout: float = 30) -> None:
    from store.models import SlackDelivery

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(d.done_at for d in rows(app, SlackDelivery, SlackDelivery.key == key)):
            return
        time.sleep(0.05)
    raise AssertionError(f"{key} was never marked done")


@pytest.mark.parametrize("headers", [
    {"Content-Type": JSON},  # unsigned
    {**signed_headers("{}", JSON), "Content-Type": JSON},  # signed for another body
    signed_headers(event_body(dm("hi"), "EvOld"), JSON, timestamp=int(time.time()) - 600),  # stale
    signed_headers(event_body(dm("hi"), "EvBad"), JSON, secret="not-the-secret"),
], ids=["unsigned", "wrong-body", "stale", "wrong-secret"])
def test_requests_not_signed_by_slack_get_401_and_store_nothing(app, slack, headers):
    body = event_body(dm("hi"), "EvOld" if "stale" in str(headers) else "EvBad")
    reply = app.post("/slack/events", content=body, headers=headers)
    assert reply.status_code == 401
    time.sleep(0.3)
    assert not slack.calls_to("chat.postMessage")
    with Session(app.app.state.database) as session:
        assert session.exec(select(func.count()).select_from(Message)).one() == 0


def test_a_rate_limited_post_is_retried(app, slack):
    slack.fail("chat.postMessage", "ratelimited")
    message = ask(app, slack)
    assert len(slack.calls_to("chat.postMessage")) == 2  # refused once (429), then sent
    assert button(message["blocks"], "tl_thumb_up")


def test_slack_is_off_without_tokens(client):
    assert client.post("/slack/events", content="{}").status_code == 404


@pytest.mark.app_settings(max_tokens=24)
def test_the_answer_is_edited_in_as_it_is_generated(app, slack, monkeypatch):
    from bot.slack import answering

    from serving.hooks import NoHooks

    monkeypatch.setattr(answering, "EDIT_EVERY_S", 0.0)  # an edit for every token, to see them all
    app.app.state.chat.hooks = NoHooks()  # output checks hold short answers back whole (tests/test_plugins.py)
    message = ask(app, slack)

    edits = slack.calls_to("chat.update")
    partial = [e for e in edits if "_writing…_" in context_lines(e.get("blocks") or [])]
    assert len(partial) >= 2 and edits[-1]["blocks"] == message["blocks"]
    texts = [e["blocks"][0]["text"]["text"] for e in partial]
    assert all(later.startswith(earlier.rstrip("…")) for earlier, later in zip(texts, texts[1:]))


def test_a_vote_on_an_answer_no_longer_stored_is_refused_politely(app, slack):
    message = ask(app, slack)
    gone = "00000000-0000-0000-0000-000000000000"
    post(app, block_action(ALICE, "tl_thumb_up", gone, f"D{ALICE}", message), FORM)
    refusal = slack.wait_for("chat.postEphemeral")
    assert "no longer in the store" in refusal["text"] and not rows(app, Rating)


@pytest.mark.parametrize("values, fix", [
    ({"slack_bot_token": "xoxb-1"}, "TUNELOOP_SLACK_SIGNING_SECRET"),
    ({"slack_bot_token": "xoxb-1", "slack_socket_mode": True}, "TUNELOOP_SLACK_APP_TOKEN"),
    ({"slack_bot_token": "xoxp-1", "slack_signing_secret": "s"}, "must start with 'xoxb-'"),
])
def test_half_set_slack_settings_say_what_to_set(values, fix):
    from pydantic import ValidationError

    from tuneloop.settings import Settings

    with pytest.raises(ValidationError, match=fix):
        Settings(_env_file=None, **values)


@pytest.mark.app_settings(ab_share=1.0)
def test_a_reviewer_compares_an_ab_pair_with_its_context(app, slack):
    ask(app, slack)
    wait_rows(app, Response, count=2)

    post(app, slash_command(RITA, "review"), FORM)
    task = slack.wait_for("chat.postMessage", lambda a: a["channel"] == RITA)
    assert "which answer is better" in json.dumps(task["blocks"]) and "What is WAL?" in json.dumps(task["blocks"])
    pair = json.loads(button(task["blocks"], "tl_compare_b_better"))
    post(app, block_action(RITA, "tl_compare_b_better", json.dumps(pair), RITA, {"ts": "9", "blocks": task["blocks"]}),
         FORM)

    (comparison,) = wait_rows(app, Comparison)
    (rita,) = rows(app, User, User.external_id == f"slack:{RITA}")
    shown_second = pair["b"] if pair["a_position"] == 0 else pair["a"]
    assert comparison.user_id == rita.id
    assert str(comparison.response_a_id if comparison.winner == "a" else comparison.response_b_id) == shown_second


@pytest.mark.app_settings(public_url="https://tuneloop.example")
def test_the_announced_report_link_opens_with_its_key_alone(app, slack, tmp_path, tiny_model):
    from tests.adapters import add_candidate, make_adapter

    add_candidate(app.app.state.database, "r3", make_adapter(tiny_model, tmp_path / "r3"))
    (tmp_path / "report.html").write_text("<h1>Report of r3</h1>")
    announcement = slack.wait_for("chat.postMessage", lambda a: a["channel"] == "C0OPS")
    link = next(line for line in json.dumps(announcement["blocks"]).split("<")
                if line.startswith("https://tuneloop.example")).split("|")[0]
    path = link.removeprefix("https://tuneloop.example")

    assert "?key=" in path and app.get(path).text == "<h1>Report of r3</h1>"
    assert app.get(path.split("?key=")[0] + "?key=guessed").status_code == 403
    assert app.get(path.split("?key=")[0]).status_code == 401


def test_a_canarys_own_rollback_is_announced_once_with_how_to_undo_it(app, slack, tmp_path, tiny_model):
    from store import releases
    from store.db import session_scope
    from tests.adapters import add_candidate, make_adapter
    from tests.test_canary import _choices

    database = app.app.state.database
    add_candidate(database, "r-judged", make_adapter(tiny_model, tmp_path / "r-judged"))
    slack.wait_for("chat.postMessage", lambda a: "candidate" in a.get("text", ""))  # the candidate's own post
    with session_scope(database) as session:
        canary = releases.approve(session, "r-judged", None, canary=0.5)
        ids = canary.id, releases.active_release(session).id
    _choices(database, ids[1], ids[0], ["active"] * 40)
    assert app.app.state.canary.look().action == "rollback"
    post_ = slack.wait_for("chat.postMessage", lambda a: "rolled back automatically" in a.get("text", ""))
    text = json.dumps(post_["blocks"])
    assert post_["channel"] == "C0OPS" and "interleaved choices crossed its boundary" in text
    assert "tuneloop releases approve r-judged --canary" in text  # how an operator undoes it
    time.sleep(1.0)  # a few more looks by the announcer
    assert len([c for c in slack.calls_to("chat.postMessage") if "automatically" in c.get("text", "")]) == 1
