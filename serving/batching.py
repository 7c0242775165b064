"""What each row of a running batch asks for: its own sampling settings, stop strings,
token cap and streamed text (serving/decode.py runs the batch itself)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor

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
    generator: Any = None  # the row's own torch.Generator when its request has a seed (made on first draw)
    matcher: Any = None  # a guided row's grammar matcher (serving/guided.py)
    logprobs: list | None = None  # each generated token's TokenLogprob, when the request asks

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


class RowOutput:
    """Turns each new token of a row into streamed text, and decides when the row is finished."""

    def __init__(self, decode: Callable[[list[int]], str], eos_ids: set[int]):
        self.decode, self.eos_ids = decode, eos_ids

    def advance(self, row: RowState, token: int) -> None:
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


def completion_of(row: RowState) -> Completion:
    reason = "stop" if row.finish_reason == "cancelled" else row.finish_reason or "length"
    return Completion(
        text=row.text, finish_reason=reason, prompt_tokens=row.prompt_tokens, completion_tokens=len(row.token_ids),
        logprobs=row.logprobs,
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
