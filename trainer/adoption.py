"""Which of the styles users chose a candidate adopts as its instruction (Release.instruction).

An instruction changes every answer a release gives, not only the kind users voted on. Under
"warm" the embedded SmolLM2-135M answered "What is the capital of France?" with "Bonjour,
welcome to the City of Love! ...", and the golden set's ROUGE-L fell from 0.15 to 0.02, so the
gate refused that candidate (bench/README.md). An instruction can also change how long answers
are, which the gate refuses too, and that shows on users' prompts more than on the golden set's
short facts: under "simple" the embedded model's answers were 21% shorter on the golden set,
51% on 32 training prompts (greedy, on the CPU vLLM server). So before a style is adopted, the
active release answers with its instruction added and without it: the golden prompts, and
training prompts of the night's users (the gate measures length on held-out ones; these are
never those). A style that costs more golden ROUGE-L than the gate allows (`max_golden_drop`)
or changes the length of users' answers more than it allows (`max_length_drift`) is not
adopted: the gate would refuse the candidate for it. The next chosen style is tried in its
place. The weights still learn every chosen style (distill), which the gate then judges as a
whole.

Each style is checked on its own, added to the active release's instruction; with
`adopt_styles` above 1 their combination is not checked here (the gate still sees it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from serving.engine import SamplingParams
from serving.pairs import instructed
from trainer import answers
from trainer.assessment import torch_device
from trainer.curation.golden import GoldenItem
from trainer.data import TrainingData
from trainer.datasets import with_system
from trainer.evaluate import golden_messages, length_drift, text_scores
from trainer.gate import GateThresholds, check
from trainer.styles import ChosenStyle, release_instruction

# Users' prompts a style's length is measured on: half the gate's 64 evaluation prompts, so the
# check costs each chosen style 32 answers more than the golden set's.
LENGTH_PROMPTS = 32
Answer = Callable[[list[list[dict]]], list[str]]  # the active release's greedy answers, in order


@dataclass(frozen=True)
class Trial:
    """One chosen style's check: the active release's golden-set ROUGE-L with the style added,
    its drop from that release's own, the drift of its answers' length (None where the active
    release's were empty), whether the release held (both within the gate's) and whether the
    style was adopted (it held, and fewer than `most` better-chosen styles had)."""

    style: str
    rouge_l: float
    rouge_l_drop: float
    length_drift: float | None
    holds: bool
    adopted: bool

    def as_dict(self) -> dict:
        return {"style": self.style, "rouge_l": self.rouge_l, "rouge_l_drop": self.rouge_l_drop,
                "length_drift": self.length_drift, "holds": self.holds, "adopted": self.adopted}


def adopt(chosen: Sequence[ChosenStyle], most: int, active_instruction: str | None, golden: Sequence[GoldenItem],
          prompts: Sequence[list[dict]], system_prompt: str, answer: Answer,
          gate: GateThresholds) -> tuple[list[ChosenStyle], list[Trial]]:
    """Up to `most` of `chosen` (best first) under which the release holds, and every check made.
    `prompts` are users' conversations (system prompt included) on which the length is measured;
    without any, on the golden set. One call to `answer` for all of them: every prompt under the
    active release's instruction, then under each style's."""
    if most <= 0 or not chosen or not golden:
        return list(chosen[:max(most, 0)]), []
    asked = [*(golden_messages(item, system_prompt) for item in golden), *prompts]
    instructions = [active_instruction, *(release_instruction(active_instruction, [style]) for style in chosen)]
    answers = answer([instructed(messages, text) for text in instructions for messages in asked])
    each = [answers[i * len(asked):(i + 1) * len(asked)] for i in range(len(instructions))]
    scores = [text_scores(texts[:len(golden)], [item.answer for item in golden])["rouge_l"] for texts in each]
    measured = slice(len(golden), None) if prompts else slice(None, len(golden))
    adopted, trials = [], []
    for style, score, texts in zip(chosen, scores[1:], each[1:], strict=True):
        drift = length_drift(texts[measured], each[0][measured])["drift"]
        holds = _holds(gate, scores[0] - score, drift)
        keep = holds and len(adopted) < most
        adopted += [style] if keep else []
        trials.append(Trial(style.name, score, scores[0] - score, drift, holds, keep))
    return adopted, trials


def _holds(gate: GateThresholds, golden_drop: float, drift: float | None) -> bool:
    """The gate's own verdict on the two figures an instruction alone can move (a figure it cannot
    measure passes, as there); the others are the candidate's, judged after training."""
    return check(replace(gate, required=()), {"golden_drop": golden_drop, "length_drift": drift})["passed"]


def length_prompts(data: TrainingData, system_prompt: str, seed: int,
                   most: int = LENGTH_PROMPTS) -> list[list[dict]]:
    """Up to `most` of the night's training prompts (a seeded draw), as served: the system
    prompt first."""
    return [with_system(messages, system_prompt) for messages, _ in data.drawn_prompts(seed, most)]


def active_answers(environment, adapter: str | None, max_tokens: int) -> Answer:  # noqa: ANN001 - trainer.nightly.Environment
    """`Answer` by the release at `adapter`, greedy and capped as evaluation answers, through the
    night's answer engine (in-process where that cannot start)."""
    def answer(prompts: list[list[dict]]) -> list[str]:
        local = answers.in_process(environment.model_path, torch_device(environment.device))
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        done = asyncio.run(answers.sample(environment.answer_engine or local, local, adapter, prompts, params,
                                          "Answering the golden set under the chosen styles"))
        return [completion.text for completion in done]

    return answer
