"""Review items handed out so two reviewers do not work on the same one, except a share of
items given to two reviewers on purpose: the overlap that curation's agreement figures need.

An item (an answer, or a pair) has one claim slot, or two when it falls in the overlap share
(decided by a hash of the item, so every replica agrees). Claims are leases in the store's
`job_locks` table, the same leases the nightly job takes: a reviewer who opens an item holds
its slot for a while; one who judges it keeps it for good; a slot whose lease ran out is free.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlmodel import Session

from store import locks
from store.models import User, in_utc, utcnow

LOOKING = timedelta(minutes=15)  # how long an opened item stays with its reviewer
JUDGED = timedelta(days=3650)  # a judged item stays theirs


def item_key(response_ids: list) -> str:
    return min(str(i) for i in response_ids)


def overlapping(key: str, share: float) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32 < share


def _slots(key: str, share: float) -> list[str]:
    return [f"review:{key}#{slot}" for slot in range(2 if overlapping(key, share) else 1)]


def _holder(reviewer: User) -> str:
    return f"reviewer:{reviewer.id}"


def available(session: Session, reviewer: User, response_ids: list, share: float) -> bool:
    """Whether `reviewer` may get this item: a slot is theirs already, or free."""
    now = utcnow()
    for name in _slots(item_key(response_ids), share):
        held = locks.holder_of(session, name)
        if held is None or held.holder == _holder(reviewer) or in_utc(held.expires_at) < now:
            return True
    return False


def claim(session: Session, reviewer: User, response_ids: list, share: float, lease: timedelta = LOOKING) -> bool:
    """Give the item to `reviewer` for `lease` (renewing a slot they hold); False if both are taken."""
    slots, holder = _slots(item_key(response_ids), share), _holder(reviewer)
    for name in slots:
        held = locks.holder_of(session, name)
        if held is not None and held.holder == holder:
            return locks.renew(session, name, holder, lease)
    return any(locks.acquire(session, name, holder, lease) for name in slots)


def keep(session: Session, reviewer: User, response_ids: list, share: float) -> None:
    """The reviewer judged the item: it stays with them."""
    claim(session, reviewer, response_ids, share, JUDGED)
