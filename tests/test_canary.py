"""Canaries that judge themselves: the sequential tests, the decisions on evidence in the store
(SQLite and PostgreSQL, one decision across replicas), and the loop end to end on the tiny model
through the widget, where simulated users dislike the canary.

The simulated users here see which release gave an answer (they look it up in the store): what
is under test is the loop from their choices to the decision, not whether the tiny random model's
answers are any good.
"""

from __future__ import annotations

import math
import random
import re
import threading
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from sqlmodel import Session, select

from bench.canary import SCENARIOS, run
from feedback import sequential
from feedback.canary import CanaryEvidence, CanaryPolicy, ReleaseEvidence, judge
from serving.canary import DECIDE, CanaryMonitor
from store import conversations, releases, users
from store.db import make_engine, session_scope
from store.migrate import upgrade
from store.models import AuditLog, Channel, Comparison, MessageRole, Release, ReleaseState, Response, Winner
from tests.adapters import add_candidate, make_adapter, operator_token
from tests.conftest import LiveServer
from tests.test_loop import eventually, release_of

# ------------------------------------------------------------------ the statistics


def test_the_choice_statistic_is_the_beta_mixtures_likelihood_ratio():
    assert sequential.choice_log_ratio(0, 0) == 0.0
    assert sequential.choice_log_ratio(3, 9) == pytest.approx(sequential.choice_log_ratio(9, 3))
    # By numerical integration of p^W (1-p)^L over Beta(12, 12), against 0.5^n.
    wins, losses, a = 7, 19, sequential.CHOICE_PRIOR
    steps = 20_000
    density = [((i + 0.5) / steps) for i in range(steps)]
    beta = math.exp(math.lgamma(a) * 2 - math.lgamma(2 * a))
    integral = sum(p ** (a - 1 + wins) * (1 - p) ** (a - 1 + losses) for p in density) / steps / beta
    assert sequential.choice_log_ratio(wins, losses) == pytest.approx(math.log(integral / 0.5 ** 26), rel=1e-6)


def test_a_clear_loss_crosses_the_boundary_and_the_forecast_says_when():
    assert sequential.choices(10, 10, 0.01).verdict == "undecided"
    assert sequential.choices(2, 40, 0.01).verdict == "worse" and sequential.choices(40, 2, 0.01).verdict == "better"
    assert sequential.choices(0, 40, 0.01).verdict == "worse"  # not one win
    wins, losses = 8, 16  # a third of the choices: not yet decided at 0.01 ...
    assert sequential.choices(wins, losses, 0.01).verdict == "undecided"
    more = sequential.choices_to_decide(wins, losses, 0.01)
    scale = (wins + losses + more) / (wins + losses)  # ... and after `more` at the same rate, it is
    assert sequential.choices(round(wins * scale), round(losses * scale), 0.01).verdict == "worse"
    assert sequential.choices_to_decide(5, 5, 0.01) is None  # a fair coin so far: no decision in sight


def test_aa_canaries_checked_after_every_turn_keep_within_their_error_rates():
    """What an always-valid test is for: a fixed-sample test looked at after every turn would raise
    a false alarm in a large share of these runs."""
    policy = CanaryPolicy()
    outcomes = [run(SCENARIOS[0], policy, 1500, seed)[0] for seed in range(120)]
    assert outcomes.count("rollback") / len(outcomes) <= policy.false_rollback
    assert outcomes.count("ask_promote") / len(outcomes) <= policy.false_promotion


def test_a_disliked_canary_is_rolled_back_and_a_liked_one_promoted_or_put_to_an_operator():
    disliked = CanaryEvidence(wins=5, losses=40)
    liked = CanaryEvidence(wins=40, losses=5)
    assert judge(disliked, CanaryPolicy()).action == "rollback"
    assert judge(liked, CanaryPolicy()).action == "ask_promote"
    assert judge(liked, CanaryPolicy(promote="auto")).action == "promote"
    errors = CanaryEvidence(canary=ReleaseEvidence(answers=200, errors=30), active=ReleaseEvidence(answers=800))
    decided = judge(errors, CanaryPolicy())
    assert decided.action == "rollback" and "errors" in decided.reason  # an error-rate rise alone is enough
    assert judge(errors, CanaryPolicy(rollback_metrics=("choices", "thumbs_down"))).action == "wait"


# ------------------------------------------------------------------ decisions on the store's evidence


def _fleet(database) -> tuple[int, int]:  # noqa: ANN001
    """The base release active and a canary beside it; their ids."""
    with session_scope(database) as session:
        base = releases.ensure_base_release(session, base_model="tiny")
        canary = Release(name="r-canary", base_model="tiny", state=ReleaseState.candidate, report={})
        session.add(canary)
        session.flush()
        releases.approve(session, "r-canary", None, canary=0.5)
        return base.id, canary.id


def _choices(database, base_id: int, canary_id: int, winners: list[str]) -> None:  # noqa: ANN001
    """Interleaved pairs answered by both releases, and a user's choice on each ("canary"/"active"/"tie")."""
    with session_scope(database) as session:
        user = users.get_or_create_user(session, external_id=f"web:{uuid.uuid4().hex}", name="visitor")
        conversation = conversations.create_conversation(session, user=user, channel=Channel.web)
        for winner in winners:
            prompt = conversations.add_message(session, conversation_id=conversation.id, role=MessageRole.user,
                                               content="hello")
            answers = [Response(conversation_id=conversation.id, prompt_message_id=prompt.id, release_id=release,
                                text=f"answer of {release}", trace={"pair_kind": "release"})
                       for release in (canary_id, base_id)]
            session.add_all(answers)
            session.flush()
            chosen = {"canary": Winner.a, "active": Winner.b, "tie": Winner.tie}[winner]
            session.add(Comparison(user_id=user.id, response_a_id=answers[0].id, response_b_id=answers[1].id,
                                   winner=chosen, kind="release"))


def _decisions(database) -> list[AuditLog]:  # noqa: ANN001
    with Session(database) as session:
        return list(session.exec(select(AuditLog).where(AuditLog.action == DECIDE)))


def _state(database, name: str) -> ReleaseState:  # noqa: ANN001
    with Session(database) as session:
        return releases.get(session, name).state


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'canary.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    database = make_engine(url)
    upgrade(database)
    yield database
    database.dispose()


def test_two_replicas_looking_at_once_roll_a_disliked_canary_back_once(store):
    base_id, canary_id = _fleet(store)
    _choices(store, base_id, canary_id, ["active"] * 40 + ["canary"] * 4)
    replicas = [CanaryMonitor(store, CanaryPolicy()) for _ in range(2)]
    barrier = threading.Barrier(2)

    def look(monitor):  # noqa: ANN001
        barrier.wait()
        for _ in range(3):
            monitor.look()

    threads = [threading.Thread(target=look, args=(monitor,)) for monitor in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    [decision] = _decisions(store)
    assert decision.details["decision"] == "rollback" and decision.actor == "system"
    assert decision.details["evidence"]["tests"]["choices"]["verdict"] == "worse"
    assert _state(store, "r-canary") == ReleaseState.rolled_back
    with Session(store) as session:
        rollbacks = session.exec(select(AuditLog).where(AuditLog.action == "release.rollback")).all()
    assert len(rollbacks) == 1 and rollbacks[0].details["reason"].startswith("automatic: users like it less")

    # An operator who disagrees approves it again: a new canary period, judged on fresh evidence.
    with session_scope(store) as session:
        releases.approve(session, "r-canary", None, canary=0.5)
    assert replicas[0].look().action == "wait"
    assert _state(store, "r-canary") == ReleaseState.canary


def test_an_aa_canary_is_neither_rolled_back_nor_promoted_and_a_win_asks_once(store):
    base_id, canary_id = _fleet(store)
    monitor, coin = CanaryMonitor(store, CanaryPolicy()), random.Random(7)
    for _ in range(60):  # 300 choices, looked at after every 5
        _choices(store, base_id, canary_id, [coin.choice(["canary", "active", "tie"]) for _ in range(5)])
        assert monitor.look().action == "wait"
    assert _decisions(store) == [] and _state(store, "r-canary") == ReleaseState.canary

    _choices(store, base_id, canary_id, ["canary"] * 80)  # now users clearly prefer it
    assert monitor.look().action == "ask_promote" and monitor.look().action == "ask_promote"
    [asked] = _decisions(store)  # put to the operators once, not at every look
    assert asked.details["decision"] == "ask_promote" and _state(store, "r-canary") == ReleaseState.canary

    auto = CanaryMonitor(store, CanaryPolicy(promote="auto"))
    assert auto.look().action == "promote" and _state(store, "r-canary") == ReleaseState.active


# ------------------------------------------------------------------ end to end on the tiny model


def _widget_turn(url: str, headers: dict) -> tuple[list[dict], str]:
    conversation = httpx.post(f"{url}/api/conversations", headers=headers).json()["id"]
    reply = httpx.post(f"{url}/api/conversations/{conversation}/messages", json={"content": "hello"},
                       headers=headers, timeout=60)
    assert reply.status_code == 200 and "event: error" not in reply.text
    turn = httpx.get(f"{url}/api/conversations/{conversation}", headers=headers).json()["turns"][-1]
    return turn["answers"], conversation


def test_users_who_dislike_a_canary_roll_it_back_by_themselves_failing_no_request(settings, tiny_engine, tiny_model,
                                                                                 tmp_path):
    from tuneloop.app import create_app

    watched = settings.model_copy(update={"canary_compare_share": 1.0, "canary_check_interval_s": 0.2,
                                          "rate_limit_chat": "", "max_tokens": 6})
    (tmp_path / "report.html").write_text("<html><body><h1>r-disliked</h1></body></html>")  # as training writes it
    with LiveServer(create_app(watched, engine=tiny_engine)) as service:
        database = service.app.state.database
        add_candidate(database, "r-disliked", make_adapter(tiny_model, tmp_path / "adapter"))
        api = ApiTraffic(service.url)  # other users on the OpenAI API all along, on both releases
        api.start()
        operator = {"Authorization": f"Bearer {operator_token(database)}"}
        approved = httpx.post(f"{service.url}/api/releases/r-disliked/approve", json={"canary": 0.5}, headers=operator)
        assert approved.status_code == 200 and approved.json()["state"] == "canary"
        headers = {"Authorization": f"Bearer {httpx.post(f'{service.url}/api/session').json()['token']}"}

        shown = []
        for _ in range(80):
            answers, _ = _widget_turn(service.url, headers)
            if len(answers) < 2:
                break  # rolled back: turns are single answers again
            made_by = {a["response_id"]: release_of(database, a["response_id"]) for a in answers}
            shown.append(set(made_by.values()))
            by_position = sorted(answers, key=lambda a: a["position"])
            active = next(a for a in by_position if made_by[a["response_id"]] == "base")
            other = next(a for a in by_position if a is not active)
            body = {"response_a_id": active["response_id"], "response_b_id": other["response_id"], "winner": "a",
                    "a_position": active["position"]}
            assert httpx.post(f"{service.url}/api/feedback/comparisons", json=body, headers=headers).status_code == 201
            if _state(database, "r-disliked") == ReleaseState.rolled_back:
                break
        assert shown and all(releases_ == {"base", "r-disliked"} for releases_ in shown)  # interleaved, every time
        assert eventually(lambda: _state(database, "r-disliked") == ReleaseState.rolled_back, timeout=30)
        [decision] = _decisions(database)
        assert decision.details["decision"] == "rollback"
        assert 10 <= decision.details["evidence"]["events"] <= 80
        # Serving follows: the next turns are the active release's own.
        assert eventually(lambda: {release_of(database, a["response_id"])
                                   for a in _widget_turn(service.url, headers)[0]} == {"base"}, timeout=30)

        api.stop()
        api.releases(database)
        assert api.failed == [] and {release for _, _, release in api.streams} == {"base", "r-disliked"}

        live = httpx.get(f"{service.url}/api/releases/r-disliked", headers=operator).json()
        assert live["state"] == "rolled_back" and live["report"]["canary"]["decision"]["action"] == "rollback"
        assert len(live["report"]["canary"]["history"]) >= 2
        page = httpx.get(f"{service.url}/api/releases/r-disliked/report", headers=operator)
        assert page.status_code == 200 and 'id="canary"' in page.text and "data:image/png;base64," in page.text


class ApiTraffic(threading.Thread):
    """Streaming chats over the OpenAI API, one after another, each a new conversation (so about
    half land on a 50% canary); records when each ran, which release made it, and any failure."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.halt = url, threading.Event()
        self.streams: list[tuple[datetime, datetime, str]] = []
        self.failed: list[str] = []

    @property
    def answered(self) -> int:
        return len(self.streams)

    def run(self) -> None:
        from openai import OpenAI

        client = OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)
        while not self.halt.is_set():
            started = datetime.now(UTC).replace(tzinfo=None)
            try:
                stream = client.chat.completions.with_raw_response.create(
                    model="tuneloop", stream=True, max_tokens=120, temperature=1.0,
                    messages=[{"role": "user", "content": "Tell me a story."}])
                response_id = stream.headers["X-Tuneloop-Response-Id"]
                chunks = list(stream.parse())
                assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                self.failed.append(repr(error))
                continue
            self.streams.append((started, datetime.now(UTC).replace(tzinfo=None), response_id))

    def stop(self) -> None:
        self.halt.set()
        self.join(60)

    def releases(self, database) -> None:  # noqa: ANN001
        """Name each stream's release (from its response row)."""
        self.streams = [(start, end, release_of(database, rid)) for start, end, rid in self.streams]


def test_a_rollback_while_the_canary_streams_an_answer_lets_that_answer_finish(settings, tiny_engine, tiny_model,
                                                                              tmp_path):
    from serving.routing import in_canary
    from tuneloop.app import create_app

    quiet = settings.model_copy(update={"canary_compare_share": 0.0, "canary_check_interval_s": 3600,
                                        "rate_limit_chat": "", "max_tokens": 400})
    with LiveServer(create_app(quiet, engine=tiny_engine)) as service:
        database = service.app.state.database
        add_candidate(database, "r-streaming", make_adapter(tiny_model, tmp_path / "adapter"))
        operator = {"Authorization": f"Bearer {operator_token(database)}"}
        assert httpx.post(f"{service.url}/api/releases/r-streaming/approve", json={"canary": 0.5},
                          headers=operator).status_code == 200
        assert eventually(lambda: service.app.state.live.canary is not None)
        headers = {"Authorization": f"Bearer {httpx.post(f'{service.url}/api/session').json()['token']}"}
        conversation = next(c for c in (httpx.post(f"{service.url}/api/conversations", headers=headers).json()["id"]
                                        for _ in range(50)) if in_canary(uuid.UUID(c), 0.5))
        with httpx.stream("POST", f"{service.url}/api/conversations/{conversation}/messages", headers=headers,
                          json={"content": "Tell me a long story."}, timeout=120) as reply:
            lines = reply.iter_lines()
            next(line for line in lines if line == "event: delta")  # the canary is answering ...
            with session_scope(database) as session:
                canary, base = releases.canary_release(session), releases.active_release(session)
                ids = canary.id, base.id
            _choices(database, ids[1], ids[0], ["active"] * 40)
            assert service.app.state.canary.look().action == "rollback"  # ... when it is rolled back
            rest = list(lines)
        events = [line.removeprefix("event: ") for line in rest if line.startswith("event: ")]
        assert "error" not in events and events[-1] == "done"  # the answer in flight finished whole
        assert _state(database, "r-streaming") == ReleaseState.rolled_back
        again = httpx.post(f"{service.url}/api/conversations/{conversation}/messages", json={"content": "hi"},
                           headers=headers, timeout=60)
        assert again.status_code == 200 and '"release": "base"' in again.text  # the conversation moved back


def test_releases_show_reads_out_the_live_canary(monkeypatch, tmp_path):
    from tests.test_cli import cli

    assert cli(monkeypatch, tmp_path, "db", "upgrade").exit_code == 0
    database = make_engine(f"sqlite:///{tmp_path / 'var' / 'tuneloop.db'}")
    base_id, canary_id = _fleet(database)
    _choices(database, base_id, canary_id, ["active"] * 12 + ["canary"] * 3 + ["tie"] * 2)
    shown = cli(monkeypatch, tmp_path, "releases", "show", "r-canary")
    assert shown.exit_code == 0, shown.output
    assert "17 events; decision: wait" in shown.output
    assert "interleaved choices: canary won 3, lost 12, ties 2" in shown.output
    assert re.search(r"interleaved choices\s+statistic\s+[\d.]+ / boundary 4\.61\s+\(undecided\)", shown.output)
    assert re.search(r"expected: [\d.]+ h", shown.output)  # losing at today's rate: a decision is in sight
    database.dispose()
