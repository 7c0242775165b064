"""A store with every kind of feedback, written through `store` as the service would:
people who prefer the shorter answer, as A/B choices, thumbs, and corrections."""

from __future__ import annotations

from dataclasses import dataclass

from store import conversations, judgments, releases
from store.db import session_scope
from store.models import Channel, MessageRole, Response, Thumb, Winner
from store.users import get_or_create_user

TOPICS = ["boil an egg", "plant tomatoes", "fix a leaking tap", "learn spanish verbs", "bake bread", "tie a tie",
          "change a tyre", "write a haiku", "fold a shirt", "brew green tea", "sharpen a knife", "paint a door",
          "clean a keyboard", "jump start a car", "make a paper plane", "prune a rose bush", "iron a shirt",
          "read a map", "store basil", "wash wool", "cook rice", "tune a guitar", "hang a picture", "wax a ski"]


@dataclass
class Seeded:
    pairs: int = 0
    thumbs: int = 0
    corrections: int = 0
    prompts: int = 0


def _ask(session, user, question: str, answers: list[str], traces: list[dict] | None = None,  # noqa: ANN001
         ) -> list[Response]:
    traces = traces or [{} for _ in answers]
    conversation = conversations.create_conversation(session, user=user, channel=Channel.web)
    prompt = conversations.add_message(session, conversation_id=conversation.id, role=MessageRole.user,
                                       content=question)
    return [conversations.add_response(session, response=Response(
                conversation_id=conversation.id, prompt_message_id=prompt.id, text=text, trace={"index": i, **trace}))
            for i, (text, trace) in enumerate(zip(answers, traces, strict=True))]


def seed(database, *, pairs: int = 0, thumbs: int = 0, corrections: int = 0, unrated: int = 0,  # noqa: ANN001
         contrasts: dict[str, tuple[int, int]] | None = None, users: int = 6) -> Seeded:
    """Feedback on distinct questions; each person gives no more than a share of it.
    `contrasts`: per contrast style (serving/pairs.py), A/B choices its answer (won, lost)
    against the plain answer, the styled answer shown second."""
    seeded = Seeded()
    with session_scope(database) as session:
        releases.ensure_base_release(session, base_model="tiny")
        people = [get_or_create_user(session, external_id=f"seed:{i}", name=f"person {i}") for i in range(users)]
        questions = (f"How do I {topic}{'' if round == 0 else ' quickly' * round}?"
                     for round in range(10) for topic in TOPICS)
        for i in range(pairs):
            short, long = _ask(session, people[i % users], next(questions),
                               ["Short answer.", "A much longer answer that goes on and on about it."])
            judgments.save_comparison(session, user=people[i % users], response_a=short, response_b=long,
                                      winner=Winner.a, a_position=0)
            seeded.pairs += 1
        for i in range(thumbs):
            text = "Short." if i % 2 == 0 else "A long rambling answer that nobody wanted to read at all."
            (answer,) = _ask(session, people[i % users], next(questions), [text])
            judgments.save_rating(session, user=people[i % users], response=answer,
                                  thumb=Thumb.up if i % 2 == 0 else Thumb.down)
            seeded.thumbs += 1
        for i in range(corrections):
            (answer,) = _ask(session, people[i % users], next(questions), ["A long answer that wanders off topic."])
            judgments.add_correction(session, user=people[i % users], response=answer, text="Do this, briefly.",
                                     comment=None)
            seeded.corrections += 1
        for style, (won, lost) in (contrasts or {}).items():
            for i in range(won + lost):
                plain, styled = _ask(session, people[i % users], next(questions), ["A plain answer.", f"A {style} one."],
                                     [{}, {"contrast": style}])
                judgments.save_comparison(session, user=people[i % users], response_a=plain, response_b=styled,
                                          winner=Winner.b if i < won else Winner.a, a_position=0, kind="contrast")
                seeded.pairs += 1
        for i in range(unrated):
            _ask(session, people[i % users], next(questions), ["An answer nobody rated."])
            seeded.prompts += 1
    return seeded
