"""The reviewers' and operators' workspace in a real browser (Debian's chromium) against a live
server and the tiny model: sign-in, the review queue worked by keyboard, the operator's console
approving a canary, roles and CSRF enforced by the server, and axe-core's accessibility checks.

Set TUNELOOP_WORKSPACE_SCREENSHOTS=DIR to keep pictures of both pages at desktop and phone width.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from store import users
from store.db import session_scope
from store.models import AuditLog, Comparison, Correction, Rating, ReleaseState, Role, Thumb
from tests.adapters import add_candidate, make_adapter
from tests.test_loop import eventually
from tests.test_widget_browser import browser, expect  # noqa: F401 - the module's browser fixture

PHONE, DESKTOP = {"width": 390, "height": 844}, {"width": 1200, "height": 860}


def token(database, name: str, role: Role) -> str:  # noqa: ANN001
    with session_scope(database) as session:
        user = users.get_or_create_user(session, external_id=f"local:{name}", name=name, role=role)
        return users.issue_token(session, user=user)


@pytest.fixture
def open_page(browser, live_server):  # noqa: F811
    contexts = []

    def opened(viewport: dict = DESKTOP):
        context = browser.new_context(viewport=viewport)
        context.set_default_timeout(30_000)
        contexts.append(context)
        return context.new_page()

    yield opened
    for context in contexts:
        context.close()


def sign_in(page, url: str, secret: str) -> None:
    page.goto(f"{url}/signin")
    page.get_by_label("Your token").fill(secret)
    page.get_by_role("button", name="Sign in").click()


def no_serious_violations(page) -> None:
    from axe_playwright_python.sync_playwright import Axe

    violations = Axe().run(page).response["violations"]
    serious = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in violations
               if v["impact"] in ("serious", "critical")]
    assert serious == []


def answered(url: str, ab: bool, live_server) -> None:
    """A widget visitor's turn (an A/B pair when `ab`): what reviewers then review."""
    live_server.app.state.settings.ab_share = 1.0 if ab else 0.0
    headers = {"Authorization": f"Bearer {httpx.post(f'{url}/api/session').json()['token']}"}
    conversation = httpx.post(f"{url}/api/conversations", headers=headers).json()["id"]
    reply = httpx.post(f"{url}/api/conversations/{conversation}/messages", json={"content": "hello"},
                       headers=headers, timeout=60)
    assert reply.status_code == 200


def rows(database, model):  # noqa: ANN001
    with Session(database) as session:
        return list(session.exec(select(model)))


def test_a_reviewer_works_three_items_by_keyboard(open_page, live_server):
    url, database = live_server.url, live_server.app.state.database
    for ab in (True, False, False):
        answered(url, ab, live_server)
    page, rita = open_page(), token(database, "rita", Role.reviewer)
    sign_in(page, url, rita)
    expect(page.get_by_role("heading", name="Review")).to_be_visible()
    no_serious_violations(page)
    shot(page, "review-desktop.png")
    phone = open_page(PHONE)
    sign_in(phone, url, rita)  # the same token on a second device
    no_serious_violations(phone)
    shot(phone, "review-phone.png")
    done = {"choice": False, "thumbs down": False, "correction": False}
    for _ in range(3):
        if page.get_by_role("heading", name="Which answer is better?").count():
            page.keyboard.press("1")
            done["choice"] = True
        elif not done["thumbs down"]:
            page.keyboard.press("r")  # the reason list ...
            page.keyboard.press("ArrowDown")  # ... its first reason
            page.keyboard.press("d")
            done["thumbs down"] = True
        else:
            page.keyboard.press("w")  # the ideal answer
            page.keyboard.press("Control+a")
            page.keyboard.type("A better answer, written by a reviewer.")
            expect(page.locator("#changes ins").first).to_have_text("A")  # beside the original, as a diff
            expect(page.locator("#changes del")).not_to_have_count(0)  # the original's words, struck
            page.keyboard.press("Control+Enter")
            done["correction"] = True
        expect(page.get_by_role("status")).to_contain_text("saved")
    assert all(done.values())
    [choice] = rows(database, Comparison)
    assert choice.winner.value == "a" and choice.a_position == 0  # answer 1 as shown, stored with its position
    [rating] = rows(database, Rating)
    assert rating.thumb == Thumb.down and rating.reason == "incorrect"
    [correction] = rows(database, Correction)
    assert correction.text == "A better answer, written by a reviewer."
    expect(page.locator("#done")).to_have_text("3")

    refused = page.goto(f"{url}/releases")  # the console is for operators
    assert refused.status == 403
    expect(page.get_by_role("alert")).to_contain_text("This page is for operators")


def test_an_operator_approves_a_canary_and_the_service_routes_to_it(open_page, live_server, tiny_model, tmp_path):
    url, database = live_server.url, live_server.app.state.database
    candidate = add_candidate(database, "r1", make_adapter(tiny_model, tmp_path / "adapter"))
    with session_scope(database) as session:  # what the night that made it reported of its curation
        release = session.get(type(candidate), candidate.id)
        release.report = {**release.report, "curation": {"rows_in": 40, "rows_out": 31,
                                                        "removed": {"per_user_cap": 6, "disagreement": 3},
                                                        "agreement": {"rita": {"pairs": 0.75}}}}
    page, olga = open_page(), token(database, "olga", Role.operator)
    sign_in(page, url, olga)
    expect(page.get_by_role("heading", name="Releases")).to_be_visible()
    expect(page.get_by_text("40 rows in, 31 rows out.")).to_be_visible()
    expect(page.get_by_role("row", name="per_user_cap 6")).to_be_visible()
    expect(page.get_by_role("row", name="rita.pairs 0.750")).to_be_visible()
    no_serious_violations(page)
    shot(page, "releases-desktop.png")
    page.get_by_role("link", name="r1").click()
    expect(page.get_by_role("heading", name="r1")).to_be_visible()
    no_serious_violations(page)
    page.get_by_label("Canary share").fill("0.3")
    page.once("dialog", lambda dialog: dialog.accept() if "as a canary" in dialog.message else dialog.dismiss())
    page.get_by_role("button", name="Approve as canary").click()
    expect(page.get_by_role("status")).to_contain_text("r1 is now canary")
    assert eventually(lambda: live_server.app.state.live.canary is not None
                      and live_server.app.state.live.canary.name == "r1")  # the service routes to it
    with Session(database) as session:
        entry = session.exec(select(AuditLog).where(AuditLog.action == "release.approve")).one()
    assert entry.actor == "olga" and entry.details["to"] == "canary" and entry.details["canary"] == 0.3
    expect(page.get_by_role("heading", name="Live canary")).to_be_visible()
    shot(page, "release-desktop.png")
    phone = open_page(PHONE)
    sign_in(phone, url, olga)
    phone.goto(f"{url}/releases/r1")
    no_serious_violations(phone)
    shot(phone, "release-phone.png")


def test_the_server_enforces_roles_and_refuses_a_forged_form(open_page, live_server, tiny_model, tmp_path):
    url, database = live_server.url, live_server.app.state.database
    add_candidate(database, "r2", make_adapter(tiny_model, tmp_path / "adapter"))
    page = open_page()
    sign_in(page, url, token(database, "visitor", Role.user))
    expect(page.get_by_role("alert")).to_contain_text("Only reviewers and operators")
    assert page.request.get(f"{url}/releases", max_redirects=0).status == 303  # not signed in: to /signin

    sign_in(page, url, token(database, "olga", Role.operator))
    forged = page.request.post(f"{url}/releases/r2/actions", form={"action": "approve"})  # the cookie, no token
    assert forged.status == 403 and "CSRF" in forged.text()
    with Session(database) as session:
        assert session.exec(select(AuditLog).where(AuditLog.action == "release.approve")).first() is None
    from store import releases

    with Session(database) as session:
        assert releases.get(session, "r2").state == ReleaseState.candidate  # nothing changed

    page.get_by_role("button", name="Sign out").click()
    page.goto(f"{url}/releases")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def shot(page, name: str) -> None:
    folder = os.environ.get("TUNELOOP_WORKSPACE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def current_item(page) -> str | None:
    """The answer on a reviewer's screen (a single answer's id), or None when the queue is empty."""
    field = page.locator("input[name=response_id]").first
    return field.get_attribute("value") if field.count() else None


def test_reviewers_do_not_collide_but_overlap_items_go_to_two_and_undo_takes_back(open_page, live_server):
    url, database = live_server.url, live_server.app.state.database
    settings = live_server.app.state.settings
    for _ in range(2):
        answered(url, False, live_server)
    settings.review_overlap_share = 0.0
    pages = {}
    for name in ("ann", "bob", "cid"):
        pages[name] = open_page()
        sign_in(pages[name], url, token(database, name, Role.reviewer))
    ann, bob = current_item(pages["ann"]), current_item(pages["bob"])
    assert ann and bob and ann != bob  # each has an item of their own
    assert current_item(pages["cid"]) is None  # both items are taken
    expect(pages["cid"].get_by_text("Nothing to review right now.")).to_be_visible()

    settings.review_overlap_share = 1.0  # now every item goes to two reviewers
    pages["cid"].reload()
    assert current_item(pages["cid"]) in (ann, bob)

    page = pages["ann"]
    page.keyboard.press("u")
    expect(page.get_by_role("status")).to_contain_text("Rating saved")
    assert len(rows(database, Rating)) == 1
    page.keyboard.press("z")
    expect(page.get_by_role("status")).to_contain_text("Undone")
    assert rows(database, Rating) == []  # withdrawn, as the API's DELETE does

    # Agreement: two reviewers' thumbs on the same (overlap) answer.
    settings.review_overlap_share = 1.0
    pages["cid"].reload()
    shared = current_item(pages["cid"])
    pages["cid"].keyboard.press("u")
    expect(pages["cid"].get_by_role("status")).to_contain_text("Rating saved")
    other = next(name for name, item in (("ann", ann), ("bob", bob)) if item == shared)
    pages[other].reload()
    assert current_item(pages[other]) == shared  # still theirs
    pages[other].keyboard.press("u")
    expect(pages[other].get_by_role("status")).to_contain_text("Rating saved")
    expect(pages[other].locator("#agreement")).to_contain_text("1 of 1 shared items (100%)")
