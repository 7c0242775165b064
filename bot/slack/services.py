"""What the Slack listeners work with: the same services the widget and the CLI use."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.engine import Engine as Database
from sqlmodel import Session

from serving.service import ChatService
from tuneloop.settings import Settings

T = TypeVar("T")


@dataclass
class SlackServices:
    settings: Settings
    database: Database
    chat: ChatService

    async def in_session(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)` on a worker thread in one transaction, committed if it returns."""

        def run() -> T:
            with Session(self.database, expire_on_commit=False) as session:
                result = work(session)
                session.commit()
                return result

        return await asyncio.to_thread(run)
