"""Release approval: the life cycle, who may do it, and the audit trail."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlmodel import Session, col, select

from serving.routing import in_canary
from store import releases, users
from store.db import session_scope
from store.models import AuditLog, ReleaseState, Role
from tests.adapters import add_candidate, make_adapter, operator_token


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    return make_adapter(tiny_model, tmp_path_factory.mktemp("adapter"))


def test_life_cycle_with_canary_promote_and_rollback(database, adapter):
    with session_scope(database) as session:
        releases.ensure_base_release(session, base_model="tiny")
        olga = users.get_or_create_user(session, external_id="local:olga", name="olga", role=Role.operator)
    add_candidate(database, "r1", adapter)
    add_candidate(database, "r2", adapter)
    with session_scope(database) as session:
        assert releases.approve(session, "r1", olga, canary=0.2).state == ReleaseState.canary
        with pytest.raises(releases.ReleaseError, match="already the canary"):
            releases.approve(session, "r2", olga, canary=0.1)
        assert releases.promote(session, olga).name == "r1"
        assert releases.get(session, "base").state == ReleaseState.retired
        assert releases.reject(session, "r2", olga, reason="worse on tone").state == ReleaseState.rejected
        with pytest.raises(releases.ReleaseError, match="rejected"):
            releases.approve(session, "r2", olga)
        assert releases.rollback(session, olga, reason="users liked it less").name == "base"
        assert releases.get(session, "r1").state == ReleaseState.rolled_back
        assert releases.active_release(session).name == "base"
    with Session(database) as session:
        trail = [(e.action, e.actor) for e in session.exec(select(AuditLog).order_by(col(AuditLog.id)))
                 if e.actor == "olga"]
    assert trail == [("release.approve", "olga"), ("release.retire", "olga"), ("release.promote", "olga"),
                     ("release.reject", "olga"), ("release.rollback", "olga"), ("release.restore", "olga")]


def test_canary_routing_is_sticky_per_conversation():
    conversations = [uuid.uuid4() for _ in range(2000)]
    first = [in_canary(c, 0.2) for c in conversations]
    assert first == [in_canary(c, 0.2) for c in conversations]
    assert 0.15 < sum(first) / len(first) < 0.25


def test_only_operators_approve_over_http(live_server, adapter):
    database = live_server.app.state.database
    add_candidate(database, "r9", adapter, instruction="Give the answer as numbered steps.")
    visitor = httpx.post(f"{live_server.url}/api/session").json()["token"]
    url = f"{live_server.url}/api/releases/r9/approve"
    assert httpx.post(url).status_code == 401
    refused = httpx.post(url, headers={"Authorization": f"Bearer {visitor}"})
    assert refused.status_code == 403 and "operators" in refused.json()["detail"]
    operator = {"Authorization": f"Bearer {operator_token(database)}"}
    listed = httpx.get(f"{live_server.url}/api/releases", headers=operator).json()
    assert {r["name"]: r["state"] for r in listed} == {"r9": "candidate", "base": "active"}
    assert {r["name"]: r["instruction"] for r in listed} == {"r9": "Give the answer as numbered steps.", "base": None}
    approved = httpx.post(url, json={"canary": 0.3}, headers=operator)
    assert approved.status_code == 200 and approved.json()["state"] == "canary"
    again = httpx.post(url, headers=operator)
    assert again.status_code == 409 and "canary" in again.json()["detail"]
    assert httpx.post(f"{live_server.url}/api/releases/nope/approve", headers=operator).status_code == 404
    assert httpx.post(f"{live_server.url}/api/releases/promote", headers=operator).json()["state"] == "active"


def test_the_store_allows_one_active_and_one_canary_release_whatever_the_code_does(database):
    from sqlalchemy.exc import IntegrityError

    from store.db import session_scope
    from store.models import Release, ReleaseState

    with session_scope(database) as session:
        session.add(Release(name="first", base_model="tiny", state=ReleaseState.active))
        session.add(Release(name="trial", base_model="tiny", state=ReleaseState.canary, canary_share=0.2))
    for state in (ReleaseState.active, ReleaseState.canary):
        with pytest.raises(IntegrityError):
            with session_scope(database) as session:  # as two racing approvals would, past every check
                session.add(Release(name=f"second-{state.value}", base_model="tiny", state=state))
    with session_scope(database) as session:
        session.add(Release(name="old", base_model="tiny", state=ReleaseState.retired))
        session.add(Release(name="older", base_model="tiny", state=ReleaseState.retired))  # many of the others
