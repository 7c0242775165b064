"""Per-row control of one batched `model.generate` call.

transformers' `generate` samples a whole batch with one temperature and streams only
batch size 1. Its continuous batching (`generate_batch`) would fit, but measured on
this 2-core CPU it gave 16 tokens/s for 8 requests against 56 for a padded batch
through `generate`, so we batch through `generate` and add the per-request parts here:
sampling settings, stop strings, token caps, cancellation and streaming, each per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from serving.engine import Completion, SamplingParams, StreamEvent


@dataclass
class RowState:
    """One request's progress inside a batch."""

    params: SamplingParams
    prompt_tokens: int
    emit: Callable[[StreamEvent], None]
    is_cancelled: Callable[[], bool] = lambda: False
    prompt_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # text already sent to the client
    finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class RowSampling(LogitsProcessor):
    """Temperature and nucleus (top-p) filtering with each row's own settings.

    The vocabulary sort that top-p needs is the costly part of a decoding step on a small
    model, so it runs only for the rows that ask for top-p below 1.
    """

    def __init__(self, rows: Sequence[RowState]):
        self.greedy = torch.tensor([row.params.temperature <= 0 for row in rows])
        self.temperature = torch.tensor([max(row.params.temperature, 1e-5) for row in rows]).unsqueeze(1)
        self.top_p = torch.tensor([row.params.top_p for row in rows]).unsqueeze(1)
        self.nucleus = (self.top_p.squeeze(1) < 1.0) & ~self.greedy

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        device = scores.device
        scores = scores / self.temperature.to(device, scores.dtype)
        if self.nucleus.any():
            rows = self.nucleus.to(device)
            scores[rows] = _top_p(scores[rows], self.top_p.to(device, scores.dtype)[rows])
        if self.greedy.any():
            greedy = self.greedy.to(device)
            best = scores[greedy].argmax(dim=-1, keepdim=True)
            scores[greedy] = torch.full_like(scores[greedy], float("-inf")).scatter(1, best, 0.0)
        return scores


def _top_p(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
    probabilities = sorted_scores.softmax(dim=-1)
    # Drop a token once the tokens before it already cover top_p; always keep the best.
    drop_sorted = (probabilities.cumsum(dim=-1) - probabilities) >= top_p
    drop_sorted[:, 0] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


@dataclass
class BatchControl:
    """Lets a running batch pause (every row stops, unfinished ones go on in the next batch)."""

    newcomers_waiting: Callable[[], bool]
    pause_after: int  # steps a batch makes before it may pause, so every batch makes progress
    each_step: Callable[[], None] | None = None  # work that fits between two steps (adapter loads)
    steps: int = 0
    paused: bool = False


class RowStopping(StoppingCriteria):
    """Tells `generate` which rows are finished (the streamer decides when they are), or
    that the whole batch pauses."""

    def __init__(self, rows: Sequence[RowState], control: BatchControl):
        self.rows, self.control = rows, control

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        for row in self.rows:
            if not row.done and row.is_cancelled():
                row.finish_reason = "cancelled"
        self.control.steps += 1
        if self.control.each_step is not None:
            self.control.each_step()
        if self.control.steps >= self.control.pause_after and self.control.newcomers_waiting():
            self.control.paused = True
            return torch.ones(len(self.rows), dtype=torch.bool, device=input_ids.device)
        return torch.tensor([row.done for row in self.rows], device=input_ids.device)


class RowStreamer(BaseStreamer):
    """Receives each step's tokens for the whole batch and streams every row's text."""

    def __init__(self, rows: Sequence[RowState], decode: Callable[[list[int]], str], eos_ids: set[int],
                 control: BatchControl):
        self.rows, self.decode, self.eos_ids, self.control = rows, decode, eos_ids, control
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # the first call hands over the prompts
            self.seen_prompt = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            if not row.done:
                self._advance(row, token)

    def _advance(self, row: RowState, token: int) -> None:
        if token in self.eos_ids:
            self._finish(row, "stop")
            return
        row.token_ids.append(token)
        text = self.decode(row.token_ids)
        cut = _first_stop(text, row.params.stop)
        if cut is not None:
            self._send(row, text[:cut])
            self._finish(row, "stop")
            return
        if not text.endswith("\ufffd"):  # hold back half a multi-byte character
            self._send(row, _safe_prefix(text, row.params.stop))
        if len(row.token_ids) >= row.params.max_tokens:
            self._send(row, text)
            self._finish(row, "length")

    def _send(self, row: RowState, text: str) -> None:
        if len(text) > len(row.text) and text.startswith(row.text):
            row.emit(StreamEvent(text=text[len(row.text) :]))
            row.text = text

    def _finish(self, row: RowState, reason: str) -> None:
        row.finish_reason = reason
        row.emit(StreamEvent(completion=completion_of(row)))

    def end(self) -> None:
        if self.control.paused:  # unfinished rows go on in the next batch
            return
        for row in self.rows:
            if not row.done:  # generate hit its overall cap
                self._send(row, self.decode(row.token_ids))
                self._finish(row, "length")


def completion_of(row: RowState) -> Completion:
    reason = "stop" if row.finish_reason == "cancelled" else row.finish_reason or "length"
    return Completion(
        text=row.text, finish_reason=reason, prompt_tokens=row.prompt_tokens, completion_tokens=len(row.token_ids)
    )


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(stop) for stop in stops if stop and stop in text]
    return min(hits) if hits else None


def _safe_prefix(text: str, stops: Sequence[str]) -> str:
    """Text that can be sent now: hold back a tail that might grow into a stop string."""
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                hold = max(hold, size)
                break
    return text[: len(text) - hold]
