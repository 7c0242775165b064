"""What the Slack listeners work with: the same services the widget and the CLI use."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.engine import Engine as Database
from sqlmodel import Session

from bot.slack.config import SlackConfig
from serving.service import ChatService

T = TypeVar("T")


@dataclass
class SlackServices:
    config: SlackConfig
    database: Database
    chat: ChatService
    notify: Callable[[str, list[str], int, dict], None] | None = None  # plugins hear of stored feedback

    def redact(self, text: str) -> str:
        """What of a text may be stored: the same redaction as every other channel's (fails closed)."""
        return self.chat.hooks.redact(text)

    async def in_session(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)` on a worker thread in one transaction, committed if it returns;
        feedback it `told` about is announced after the commit."""

        def run() -> T:
            with Session(self.database, expire_on_commit=False) as session:
                result = work(session)
                session.commit()
                for notice in session.info.pop(NOTICES, []):
                    if self.notify is not None:
                        self.notify(*notice)
                return result

        return await asyncio.to_thread(run)


NOTICES = "tuneloop_feedback_notices"


def told(session: Session, kind: str, response_ids: list, user_id: int, details: dict | None = None) -> None:
    """Note stored feedback, for the plugins to hear of once the transaction commits."""
    session.info.setdefault(NOTICES, []).append((kind, [str(i) for i in response_ids], user_id, details or {}))
