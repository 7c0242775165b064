"""Candidate against the active release, on everything the gate and the operator look at.

`evaluate_release` answers the held-out prompts and the golden prompts with both releases
(greedy, once, one engine holding both adapters), then measures:

- win rate per judge on the held-out prompts (each pair shown in random order; Wilson interval);
- golden-set regression: ROUGE-L F and corpus BLEU against the reference answers;
- guardrail violations: the share of answers the plugins' output checks refuse, fix or flag;
- answer length drift: mean words of candidate against active;
- KL(candidate || active) per answer token, on the candidate's held-out answers;
- the primary judge's win rate per topic (the RAG scoreboard's clustering of prompts).

`win_rate` is the judged comparison alone, for callers that need only that.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from feedback.stats import wilson
from serving.pairs import instructed
from trainer.answers import AnswerCache, EngineFactory, compare, in_process
from trainer.curation import GoldenItem
from trainer.judges import Judge, words
from trainer.logprobs import (ACTIVE, CANDIDATE, device_of, encode, next_token_logprobs, pad, token_batches, using,
                              with_adapters)

EXAMPLES = 5  # held-out answers shown side by side in the report (without topics)
TOPIC_EXAMPLES = 12  # at most one per topic
GOLDEN_EXAMPLES = 3


@dataclass
class WinRate:
    wins: int
    ties: int
    losses: int
    low: float
    high: float
    judge: str
    examples: list[dict] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def rate(self) -> float:
        return (self.wins + 0.5 * self.ties) / self.n if self.n else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "n": self.n, "rate": self.rate}


# ------------------------------------------------------------------ judged win rate


def judge_answers(prompts: Sequence[str], ours: Sequence[str], theirs: Sequence[str], judge: Judge,
                  judge_name: str, seed: int = 0) -> tuple[WinRate, list[str]]:
    """The judge's win rate for `ours`, and each prompt's outcome ("win", "tie", "loss").
    Each pair is shown in random order (seeded), so a judge's position bias cancels out."""
    order = random.Random(seed)
    outcomes, examples = [], []
    for prompt, candidate, active in zip(prompts, ours, theirs, strict=True):
        swapped = order.random() < 0.5
        verdict = judge(prompt, active, candidate) if swapped else judge(prompt, candidate, active)
        # Anything but "a" or "b" ("tie", "both_bad") prefers neither release.
        outcomes.append("tie" if verdict not in ("a", "b") else "win" if (verdict == "a") != swapped else "loss")
        if len(examples) < EXAMPLES:
            examples.append({"prompt": prompt, "candidate": candidate, "active": active, "verdict": verdict,
                             "candidate_shown": "b" if swapped else "a"})
    wins, ties, losses = (outcomes.count(o) for o in ("win", "tie", "loss"))
    low, high = wilson(wins + 0.5 * ties, len(outcomes))
    return WinRate(wins, ties, losses, low, high, judge_name, examples), outcomes


def _user_texts(prompts: Sequence[list[dict]]) -> list[str]:
    return [messages[-1]["content"] for messages in prompts]


# ------------------------------------------------------------------ golden set


def text_scores(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Mean ROUGE-L F (torchmetrics, 0-1) and corpus BLEU (sacrebleu, 0-100) against the references.

    ROUGE-L comes from torchmetrics rather than Google's rouge-score: the latter pulls in nltk,
    and Guardrails AI then tries to download nltk's punkt at import, which an offline machine
    can't (and a run must never reach a hub)."""
    import sacrebleu
    from torchmetrics.functional.text.rouge import rouge_score

    if not references:
        return {"rouge_l": None, "bleu": None}
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} answers for {len(references)} references")
    rouge = float(rouge_score(list(predictions), list(references), rouge_keys="rougeL")["rougeL_fmeasure"])
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
    return {"rouge_l": rouge, "bleu": bleu}


def golden_regression(candidate: Sequence[str], active: Sequence[str], references: Sequence[str]) -> dict:
    """Both releases scored on the golden set; a positive drop means the candidate got worse."""
    ours, theirs = text_scores(candidate, references), text_scores(active, references)
    drop = {key: (theirs[key] - ours[key] if ours[key] is not None else None) for key in ("rouge_l", "bleu")}
    return {"n": len(references), "candidate": ours, "active": theirs,
            "rouge_l_drop": drop["rouge_l"], "bleu_drop": drop["bleu"]}


def golden_messages(item: GoldenItem, system_prompt: str) -> list[dict]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": item.prompt}]


# ------------------------------------------------------------------ guardrail violations

ACTED = ("fix", "flag", "refuse")  # what a check does to a text that breaks its rules


def violation_check(output_check: Any) -> Callable[[str], bool]:
    """text -> whether the plugins' output checks would refuse, fix or flag it.

    Takes what plugins provide: a `Plugins` (all its output checks), one `OutputCheck` (such as
    `trainer.curation.default_output_check()`), `TurnHooks` (`plugins.turns.PluginHooks`), or a
    plain callable text -> `Verdict` | `Checked` | text (changed = fixed) | None (refused) | bool.
    Checks run through `PluginHooks`, as on the chat path: same order, same handling of errors.
    """
    hooks = _as_hooks(output_check)
    cache: dict[str, bool] = {}  # identical answers from both releases are checked once

    def violates(text: str) -> bool:
        if text not in cache:
            result = hooks.check_output(text, "trainer", None) if hooks else output_check(text)
            cache[text] = _acted_on(result, text)
        return cache[text]

    return violates


def _as_hooks(output_check: Any) -> Any:
    from plugins.protocols import OutputCheck
    from plugins.turns import PluginHooks

    if hasattr(output_check, "output_checks"):  # the plugin manager's `Plugins`
        return PluginHooks(output_check)
    if isinstance(output_check, OutputCheck):
        return PluginHooks(_OneCheck(output_check))
    if hasattr(output_check, "checks_output"):  # already `TurnHooks`
        return output_check
    return None


class _OneCheck:
    """The part of `Plugins` that `PluginHooks` reads for output checks, holding one check."""

    def __init__(self, check: Any) -> None:
        from collections import Counter

        self.output_checks, self.input_checks, self.alternatives = [check], [], []
        self.errors: Counter[str] = Counter()


def _acted_on(result: Any, text: str) -> bool:
    from plugins.protocols import Verdict
    from serving.hooks import Checked

    if isinstance(result, Checked):
        return result.refusal is not None or any(d.get("action") in ACTED for d in result.decisions)
    if isinstance(result, Verdict):
        return result.action in ACTED
    if result is None or isinstance(result, bool):
        return result is not False  # None: refused (curation's text checks), bool: the answer itself
    return result != text  # a text check that rewrote the text fixed it


def violation_rates(candidate: Sequence[str], active: Sequence[str], output_check: Any) -> dict | None:
    """Share of each release's answers the checks act on; None when there is no check ("not measured")."""
    if output_check is None:
        return None
    violates = violation_check(output_check)
    ours, theirs = sum(map(violates, candidate)), sum(map(violates, active))
    n = len(candidate)
    if not n:
        return {"n": 0, "candidate": None, "active": None, "increase": None, "candidate_count": 0, "active_count": 0}
    return {"n": n, "candidate": ours / n, "active": theirs / n, "increase": (ours - theirs) / n,
            "candidate_count": ours, "active_count": theirs}


# ------------------------------------------------------------------ length


def length_drift(candidate: Sequence[str], active: Sequence[str]) -> dict:
    """Mean words per answer and drift = candidate / active - 1 (None when the active says nothing)."""
    ours = sum(map(words, candidate)) / len(candidate) if candidate else None
    theirs = sum(map(words, active)) / len(active) if active else None
    if ours is None or not theirs:
        drift = 0.0 if ours == theirs == 0 else None
    else:
        drift = ours / theirs - 1
    return {"candidate_words": ours, "active_words": theirs, "drift": drift}


# ------------------------------------------------------------------ KL to the active release


def kl_to_active(model: Any, tokenizer: Any, prompts: Sequence[list[dict]], answers: Sequence[str], *,
                 candidate: str = CANDIDATE, active: str | None = ACTIVE, max_batch_tokens: int = 1024) -> dict:
    """Mean exact KL(candidate || active) over the vocabulary, per token of the candidate's answers.

    `model` is a PeftModel holding the adapter `candidate` and, unless `active` is None (the
    active release is the bare base model), the adapter `active`. Each answer token's context
    is the chat-templated prompt plus the answer so far. Rows are right-padded (causal
    attention never looks ahead, so padding changes nothing) and batched by token count.
    """
    import torch

    rows = [encode(tokenizer, messages, answer) for messages, answer in zip(prompts, answers, strict=True)]
    rows = sorted((row for row in rows if row[1] < len(row[0])), key=lambda row: len(row[0]))
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for batch in token_batches(rows, max_batch_tokens):
            ids, mask, targets = pad(batch, tokenizer.pad_token_id or 0, device_of(model))
            with using(model, candidate):
                ours = next_token_logprobs(model, ids, mask, targets)
            with using(model, active):
                theirs = next_token_logprobs(model, ids, mask, targets)
            total += float((ours.exp() * (ours - theirs)).sum())
            tokens += ours.shape[0]
    return {"per_token": total / tokens if tokens else None, "tokens": tokens}


def _kl(model_path: str, candidate: str, active: str | None, prompts: Sequence[list[dict]], answers: Sequence[str],
        device: str) -> dict:
    from transformers import AutoTokenizer

    from serving.transformers_engine import pick_device

    model = with_adapters(model_path, candidate, active, pick_device(device))
    return kl_to_active(model, AutoTokenizer.from_pretrained(model_path), prompts, answers,
                        active=ACTIVE if active else None)


# ------------------------------------------------------------------ topics


def topic_names(prompts: Sequence[str], embed: Callable[[list[str]], list[list[float]]] | None = None) -> dict:
    """Each prompt -> its topic (the RAG scoreboard's k-means over MiniLM embeddings); empty when
    the prompts are too few to make two topics."""
    from plugins.rag import scoreboard

    if scoreboard.topic_count(len(set(prompts))) < 2:
        return {}
    return scoreboard.topics(prompts, embed)


def topic_breakdown(prompts: Sequence[str], outcomes: Sequence[str],
                    embed: Callable[[list[str]], list[list[float]]] | None = None,
                    names: dict[str, str] | None = None) -> list[dict]:
    """The win rate per topic (`topic_names`, or the `names` already found), largest first.
    Empty when the prompts are too few to make two topics."""
    from plugins.rag import scoreboard

    names = topic_names(prompts, embed) if names is None else names
    if not names:
        return []
    tallies: dict[str, scoreboard.Tally] = {}
    members: dict[str, set[str]] = {}
    for prompt, outcome in zip(prompts, outcomes, strict=True):
        tallies.setdefault(names[prompt], scoreboard.Tally()).add(outcome)
        members.setdefault(names[prompt], set()).add(prompt)
    rows = [{"topic": name, "prompts": len(members[name]), **tally.as_dict()} for name, tally in tallies.items()]
    for row in rows:
        row.pop("both_bad")  # a judge has no "both bad"
    return sorted(rows, key=lambda row: (-row["n"], row["topic"]))


# ------------------------------------------------------------------ all together


def _one_per_topic(texts: list[str], ours: list[str], theirs: list[str], topic_of: dict[str, str]) -> list[int]:
    picked: dict[str, int] = {}
    for i, text in enumerate(texts):
        topic = topic_of.get(text)
        if topic is not None and (topic not in picked or (ours[picked[topic]] == theirs[picked[topic]]
                                                          and ours[i] != theirs[i])):
            picked[topic] = i
    return sorted(picked.values())[:TOPIC_EXAMPLES]


@dataclass
class Evaluation:
    win_rates: dict[str, WinRate]
    primary_judge: str | None
    golden: dict
    violations: dict | None
    length: dict
    kl: dict
    topics: list[dict] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)
    answered_by: str = ""  # the engine that gave both releases' answers

    @property
    def primary(self) -> WinRate | None:
        return self.win_rates.get(self.primary_judge) if self.primary_judge else None

    def gate_metrics(self) -> dict:
        """The figures `trainer.gate.check` reads from an evaluation (the pair accuracies come from training)."""
        measured = self.primary is not None and self.primary.n > 0
        return {"win_rate": self.primary.rate if measured else None,
                "win_rate_low": self.primary.low if measured else None,
                "golden_drop": self.golden.get("rouge_l_drop"),
                "violation_increase": (self.violations or {}).get("increase"),
                "length_drift": self.length.get("drift"), "kl": self.kl.get("per_token")}

    def as_dict(self) -> dict:
        return {
            "win_rates": {name: rate.as_dict() for name, rate in self.win_rates.items()},
            "primary_judge": self.primary_judge,
            # The primary judge's figures under the key earlier reports used (Slack, operator page).
            "win_rate": self.primary.as_dict() if self.primary else None,
            "golden": self.golden, "violations": self.violations, "length": self.length, "kl": self.kl,
            "topics": self.topics, "examples": self.examples, "answered_by": self.answered_by,
        }


def evaluate_release(model_path: str, candidate_adapter: str, active_adapter: str | None,
                     prompts: Sequence[list[dict]], golden: Sequence[GoldenItem], judges: Mapping[str, Judge],
                     *, output_check: Any = None, system_prompt: str, max_tokens: int, seed: int = 0,
                     device: str = "auto", topics: bool = True,
                     embed: Callable[[list[str]], list[list[float]]] | None = None,
                     cache_dir: Path | None = None, primary: str | None = "first",
                     answer_engine: EngineFactory | None = None, candidate_instruction: str | None = None,
                     active_instruction: str | None = None) -> Evaluation:
    """Everything the gate and the report need, from one round of greedy answers by both releases.

    `prompts` are held-out chat prompts (system message first); `judges` maps names to judges,
    the first being the primary one (the gate's win rate, the topics) unless `primary` names
    another or is None (no judge decides: each is reported only); `output_check` is what
    plugins provide (see `violation_check`), or None for "not measured"; `embed` replaces the
    MiniLM embeddings used to find topics; `cache_dir` keeps the active release's answers
    between nights (`AnswerCache`); `answer_engine` makes the engine that answers (default: an
    in-process one; it falls back to that where another cannot start). Each release answers
    under its own style instruction (`candidate_instruction`, `active_instruction`), as serving
    has it answer users. The KL is measured on the prompts without them: how far the weights moved.
    """
    asked = [*prompts, *(golden_messages(item, system_prompt) for item in golden)]
    cache = AnswerCache(cache_dir, model_path, active_adapter) if cache_dir else None
    local = in_process(model_path, device)
    ours, theirs, answered_by = asyncio.run(compare(
        answer_engine or local, local, candidate_adapter, active_adapter,
        [instructed(messages, candidate_instruction) for messages in asked], max_tokens, cache,
        [instructed(messages, active_instruction) for messages in asked]))
    held = len(prompts)
    texts = _user_texts(prompts)
    judged = {name: judge_answers(texts, ours[:held], theirs[:held], judge, name, seed)
              for name, judge in judges.items()}
    primary = next(iter(judges), None) if primary == "first" else primary
    kl = _kl(model_path, candidate_adapter, active_adapter, prompts, ours[:held], device)
    references = [item.answer for item in golden]
    names = topic_names(texts, embed) if topics and primary else {}
    return Evaluation(
        win_rates={name: rate for name, (rate, _) in judged.items()},
        primary_judge=primary,
        golden=golden_regression(ours[held:], theirs[held:], references),
        violations=violation_rates(ours, theirs, output_check),
        length=length_drift(ours, theirs),
        kl=kl,
        topics=topic_breakdown(texts, judged[primary][1], names=names) if names else [],
        examples=_examples(texts, ours, theirs, judged, golden, names),
        answered_by=answered_by,
    )


def _examples(texts: list[str], ours: list[str], theirs: list[str], judged: dict, golden: Sequence[GoldenItem],
              topic_of: dict[str, str] | None = None) -> list:
    """Held-out answers before (active) and after (candidate) side by side with each judge's
    outcome: one per topic where there are topics (an answer that changed first), else the first
    few; then a few golden ones with the reference."""
    held = len(texts)
    chosen = _one_per_topic(texts, ours, theirs, topic_of) if topic_of else list(range(min(EXAMPLES, held)))
    shown = [{"kind": "held-out", "prompt": texts[i], "candidate": ours[i], "active": theirs[i],
              "topic": (topic_of or {}).get(texts[i]),
              "outcomes": {name: outcomes[i] for name, (_, outcomes) in judged.items()}}
             for i in chosen]
    shown += [{"kind": "golden", "prompt": item.prompt, "reference": item.answer,
               "candidate": ours[held + i], "active": theirs[held + i]}
              for i, item in enumerate(golden[:GOLDEN_EXAMPLES])]
    return shown
