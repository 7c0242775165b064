"""The web widget in a real browser (Debian's chromium) against a live server and a tiny model.

Set TUNELOOP_WIDGET_SCREENSHOT=/path.png to keep a picture of the open widget mid-conversation.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from store.models import Comparison, Message, MessageRole, Rating, Response

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("response", lambda r: problems.append(f"{r.status} from {r.request.method} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
    page.goto(live_server.url + "/")
    yield page
    context.close()
    assert problems == []


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


@pytest.fixture(autouse=True, scope="module")
def _patient_expect() -> None:
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=TIMEOUT_MS)  # a cold tiny model on a busy CPU can take seconds


def send(page, text: str) -> None:
    box = page.get_by_test_id("tl-input")
    expect(box).to_be_enabled()
    box.fill(text)
    box.press("Enter")


def posted(page, path: str):
    """Context manager that waits for the widget's POST to `path` to be answered."""
    return page.expect_response(lambda r: r.url.endswith(path) and r.request.method == "POST")


def turn(page, n: int):
    return page.get_by_test_id("tl-turn").nth(n)


def test_chat_rate_compare_and_reload(page, live_server):
    page.get_by_test_id("tl-bubble").click()
    expect(page.get_by_test_id("tl-panel")).to_be_visible()

    # A normal turn: the answer streams in, then gets thumbs and stars.
    send(page, "Hello there")
    first = turn(page, 0).get_by_test_id("tl-answer")
    expect(first).to_have_attribute("data-state", "done")
    first_id = first.get_attribute("data-response-id")
    expect(page.get_by_test_id("tl-input")).to_be_enabled()
    with posted(page, "/api/feedback/ratings") as saved:
        first.get_by_test_id("tl-thumb-up").click()
    assert saved.value.status == 201
    expect(first.get_by_test_id("tl-thumb-up")).to_have_attribute("aria-pressed", "true")

    # An A/B turn: two answers side by side, in display order, then a choice.
    live_server.app.state.settings.ab_share = 1.0
    send(page, "Tell me a story")
    pair = turn(page, 1).get_by_test_id("tl-ab")
    expect(pair).to_have_attribute("data-state", "choosing")
    answers = pair.get_by_test_id("tl-answer")
    expect(answers).to_have_count(2)
    shown = [{"id": answers.nth(i).get_attribute("data-response-id"),
              "position": int(answers.nth(i).get_attribute("data-position")),
              "index": int(answers.nth(i).get_attribute("data-index"))} for i in range(2)]
    assert [a["position"] for a in shown] == [0, 1]
    assert sorted(a["index"] for a in shown) == [0, 1]
    expect(page.get_by_test_id("tl-input")).to_be_enabled()
    if shot := os.environ.get("TUNELOOP_WIDGET_SCREENSHOT"):
        page.screenshot(path=shot)

    with posted(page, "/api/feedback/comparisons") as saved:
        pair.get_by_test_id("tl-choose-b").click()  # the answer shown second
    assert saved.value.status == 201
    chosen_id = shown[1]["id"]
    expect(pair).to_have_attribute("data-state", "chosen")
    expect(pair.get_by_test_id("tl-answer")).to_have_count(1)
    expect(pair.get_by_test_id("tl-answer")).to_have_attribute("data-response-id", chosen_id)
    expect(pair.get_by_test_id("tl-thumb-up")).to_be_visible()  # the chosen answer can be rated too

    # After a reload the whole conversation is drawn again, choices and votes included.
    page.reload()
    page.get_by_test_id("tl-bubble").click()
    expect(page.get_by_test_id("tl-prompt")).to_have_text(["Hello there", "Tell me a story"])
    first = turn(page, 0).get_by_test_id("tl-answer")
    expect(first).to_have_attribute("data-response-id", first_id)
    expect(first.get_by_test_id("tl-thumb-up")).to_have_attribute("aria-pressed", "true")
    expect(first.get_by_test_id("tl-thumb-down")).to_have_attribute("aria-pressed", "false")
    pair = turn(page, 1).get_by_test_id("tl-ab")
    expect(pair).to_have_attribute("data-state", "chosen")
    expect(pair).to_have_attribute("data-choice", "b")
    expect(pair.get_by_test_id("tl-answer")).to_have_attribute("data-response-id", chosen_id)

    # The store holds exactly what the user did.
    with Session(live_server.app.state.database) as session:
        ratings = session.exec(select(Rating)).all()
        assert [(str(r.response_id), r.thumb.value, r.reason) for r in ratings] == [(first_id, "up", None)]

        comparison = session.exec(select(Comparison)).one()
        a = session.get(Response, comparison.response_a_id)
        b = session.get(Response, comparison.response_b_id)
        assert (a.trace["index"], b.trace["index"]) == (0, 1)
        assert {str(a.id), str(b.id)} == {shown[0]["id"], shown[1]["id"]}
        assert comparison.a_position == a.trace["shown_at"]
        assert comparison.b_position == b.trace["shown_at"] == 1 - comparison.a_position
        clicked = a if str(a.id) == chosen_id else b
        assert clicked.trace["shown_at"] == 1
        assert comparison.winner.value == ("a" if clicked is a else "b")

        second_prompt = session.exec(select(Message).where(Message.content == "Tell me a story")).one()
        reply = session.exec(
            select(Message)
            .where(Message.conversation_id == second_prompt.conversation_id, Message.role == MessageRole.assistant,
                   col(Message.id) > second_prompt.id)
            .order_by(col(Message.id))
        ).first()
        assert reply.response_id == uuid.UUID(chosen_id)
        assert reply.content == clicked.text


def test_thumbs_down_with_reason_comment_and_stars(page, live_server):
    page.get_by_test_id("tl-bubble").click()
    send(page, "What is the capital of France?")
    answer = page.get_by_test_id("tl-answer")
    expect(answer).to_have_attribute("data-state", "done")
    answer_id = answer.get_attribute("data-response-id")

    with posted(page, "/api/feedback/ratings") as saved:
        answer.get_by_test_id("tl-thumb-down").click()
    assert saved.value.status == 201
    form = page.get_by_test_id("tl-down-form")
    expect(form).to_be_visible()
    form.get_by_test_id("tl-reason").select_option("incorrect")
    form.get_by_test_id("tl-comment").fill("It is Paris.")
    with posted(page, "/api/feedback/ratings") as saved:
        form.get_by_test_id("tl-down-submit").click()
    assert saved.value.status == 201
    expect(form).to_have_count(0)
    with posted(page, "/api/feedback/ratings") as saved:
        answer.get_by_test_id("tl-star-4").click()
    assert saved.value.status == 201
    expect(answer.get_by_test_id("tl-star-4")).to_have_attribute("aria-pressed", "true")
    expect(answer.get_by_test_id("tl-star-5")).to_have_attribute("aria-pressed", "false")

    with Session(live_server.app.state.database) as session:
        rating = session.exec(select(Rating)).one()
        assert str(rating.response_id) == answer_id
        stored = (rating.thumb.value, rating.reason, rating.comment, rating.stars)
        assert stored == ("down", "incorrect", "It is Paris.", 4)

    page.reload()
    page.get_by_test_id("tl-bubble").click()
    answer = page.get_by_test_id("tl-answer")
    expect(answer.get_by_test_id("tl-thumb-down")).to_have_attribute("aria-pressed", "true")
    expect(answer.get_by_test_id("tl-star-4")).to_have_attribute("aria-pressed", "true")
