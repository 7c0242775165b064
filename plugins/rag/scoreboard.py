"""How often people prefer the answer made with retrieved context: the RAG scoreboard.

It reads the A/B choices of kind "rag". In each pair the RAG answer is the response
whose trace has a "rag" entry; the other is the model alone. A choice of the RAG answer
is a win, of the other a loss; "tie" and "both bad" both count as a tie, half a win
(neither answer was preferred, which is what the rate measures). The interval is
Wilson's at 95%, as in the trainer's evaluation.

Topics: the prompts' embeddings are clustered (k-means, k from the number of distinct
prompts, fixed seed) and each cluster is named by its most central prompt.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session

from feedback.stats import wilson
from store.models import Comparison, Message, Response, Winner

KIND = "rag"
Z = 1.96  # 95% interval
MAX_TOPICS = 12
MIN_PROMPTS_FOR_TOPICS = 4  # fewer distinct prompts than this: one topic
TIES_NOTE = 'ties and "both bad" count as half a win: neither answer was preferred'


@dataclass
class Tally:
    wins: int = 0
    ties: int = 0  # including both_bad
    losses: int = 0
    both_bad: int = 0  # of the ties, how many were "both bad"

    def add(self, result: str) -> None:
        if result == "win":
            self.wins += 1
        elif result == "loss":
            self.losses += 1
        else:
            self.ties += 1
            self.both_bad += result == "both_bad"

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def as_dict(self) -> dict:
        successes = self.wins + 0.5 * self.ties
        low, high = _wilson(successes, self.n)
        return {**asdict(self), "n": self.n, "rate": successes / self.n if self.n else None, "low": low, "high": high}


def _wilson(successes: float, n: int) -> tuple[float, float]:
    # The trainer's own interval (feedback.stats), so both reports agree.
    return wilson(successes, n, Z)


@dataclass
class Outcome:
    prompt: str
    result: str  # win, loss, tie, both_bad (for the RAG answer)
    rag_shown_first: bool


def outcomes(session: Session) -> tuple[list[Outcome], int]:
    """Every rag comparison as an outcome for the RAG answer, and how many could not be read
    (neither or both answers carry a "rag" trace)."""
    first, second = aliased(Response), aliased(Response)
    rows = session.execute(
        select(Comparison.winner, Comparison.a_position, first.trace, second.trace, Message.content)
        .join(first, first.id == Comparison.response_a_id)
        .join(second, second.id == Comparison.response_b_id)
        .join(Message, Message.id == first.prompt_message_id)
        .where(Comparison.kind == KIND)
        .order_by(Comparison.id)
    ).all()
    found, unreadable = [], 0
    for winner, a_position, trace_a, trace_b, prompt in rows:
        a_is_rag, b_is_rag = "rag" in (trace_a or {}), "rag" in (trace_b or {})
        if a_is_rag == b_is_rag:
            unreadable += 1
            continue
        rag_side = Winner.a if a_is_rag else Winner.b
        winner = Winner(winner)
        if winner in (Winner.a, Winner.b):
            result = "win" if winner == rag_side else "loss"
        else:
            result = "both_bad" if winner == Winner.both_bad else "tie"
        rag_position = a_position if a_is_rag else 1 - a_position
        found.append(Outcome(prompt, result, rag_position == 0))
    return found, unreadable


def topic_count(distinct_prompts: int) -> int:
    """k for k-means: about sqrt(n/2) (a common rule of thumb), 1 for a handful, at most MAX_TOPICS."""
    if distinct_prompts < MIN_PROMPTS_FOR_TOPICS:
        return 1
    return max(1, min(MAX_TOPICS, round(math.sqrt(distinct_prompts / 2))))


def topics(prompts: Sequence[str], embed: Callable[[list[str]], list[list[float]]] | None = None) -> dict[str, str]:
    """Each distinct prompt -> its topic's name (the cluster's prompt nearest its centre)."""
    import numpy as np

    distinct = sorted(set(prompts))  # sorted: the same store gives the same topics
    if not distinct:
        return {}
    vectors = np.asarray(_embed(distinct, embed), dtype=float)
    k = topic_count(len(distinct))
    if k == 1:
        labels = np.zeros(len(distinct), dtype=int)
    else:
        from sklearn.cluster import KMeans

        with warnings.catch_warnings():  # near-duplicate prompts can leave a cluster with one point
            warnings.simplefilter("ignore")
            labels = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(vectors)
    names = {label: _central(distinct, vectors, labels, label) for label in set(labels.tolist())}
    return {prompt: names[label] for prompt, label in zip(distinct, labels.tolist(), strict=True)}


def _embed(texts: list[str], embed: Callable | None) -> list[list[float]]:
    if embed is None:
        from plugins.rag.embedding import embeddings

        embed = embeddings().embed_documents
    return embed(texts)


def _central(prompts: list[str], vectors, labels, label: int) -> str:  # noqa: ANN001
    members = [i for i, assigned in enumerate(labels.tolist()) if assigned == label]
    centre = vectors[members].mean(axis=0)
    best = min(members, key=lambda i: float(((vectors[i] - centre) ** 2).sum()))
    return prompts[best]


def report(session_or_engine: Session | Engine, embed: Callable | None = None) -> dict:
    """The scoreboard as JSON-ready data: overall and per topic, with 95% Wilson intervals."""
    if isinstance(session_or_engine, Engine):
        with Session(session_or_engine) as session:
            found, unreadable = outcomes(session)
    else:
        found, unreadable = outcomes(session_or_engine)
    overall = Tally()
    for outcome in found:
        overall.add(outcome.result)
    by_topic: dict[str, Tally] = {}
    prompts_in: dict[str, set[str]] = {}
    names = topics([outcome.prompt for outcome in found], embed)
    for outcome in found:
        name = names[outcome.prompt]
        by_topic.setdefault(name, Tally()).add(outcome.result)
        prompts_in.setdefault(name, set()).add(outcome.prompt)
    topic_rows = [{"topic": name, "prompts": len(prompts_in[name]), **tally.as_dict()}
                  for name, tally in by_topic.items()]
    topic_rows.sort(key=lambda row: (-row["n"], row["topic"]))
    return {
        "kind": KIND,
        "comparisons": len(found) + unreadable,
        "unreadable": unreadable,
        "confidence": 0.95,
        "ties": TIES_NOTE,
        "rag_shown_first": sum(outcome.rag_shown_first for outcome in found),
        "overall": overall.as_dict(),
        "topics": topic_rows,
    }


def render(data: dict, width: int = 48) -> str:
    """The report as a plain-text table."""
    lines = [f"RAG against the model alone: {data['overall']['n']} choices ({data['ties']}); 95% Wilson intervals."]
    if data["unreadable"]:
        lines.append(f"{data['unreadable']} rag comparisons left out: neither or both answers carry a rag trace.")
    if not data["overall"]["n"]:
        lines.append("No choices yet.")
        return "\n".join(lines)
    header = f"{'topic':<{width}} {'n':>5} {'wins':>5} {'ties':>5} {'losses':>6} {'win rate':>9}  95% interval"
    lines += ["", header, "-" * len(header), _row("overall", data["overall"], width)]
    lines += [_row(topic["topic"], topic, width) for topic in data["topics"]]
    return "\n".join(lines)


def _row(name: str, tally: dict, width: int) -> str:
    flat = " ".join(name.split())
    label = flat if len(flat) <= width else flat[:width - 3] + "..."
    rate = f"{tally['rate']:.1%}" if tally["rate"] is not None else "-"
    return (f"{label:<{width}} {tally['n']:>5} {tally['wins']:>5} {tally['ties']:>5} {tally['losses']:>6} "
            f"{rate:>9}  {tally['low']:.1%}-{tally['high']:.1%}")
