"""Constrained decoding and log-probabilities for the in-process engine.

A guided row may only take tokens that keep its text a prefix of something the grammar accepts,
so a JSON-mode answer parses whatever the model would rather say. The grammar work is xgrammar's
(the library vLLM and SGLang use for the same thing): it compiles a JSON schema against the
tokenizer's vocabulary once (its compiler caches), and per step fills a bitmask of the allowed
tokens, which it applies to the logits in place.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from serving.closing_rule import closing_tokens, prefer_closing
from serving.engine import EngineRefused, Guide, TokenLogprob

ANY_OBJECT = '{"type": "object"}'  # OpenAI's json_object: some JSON object, nothing else


@contextmanager
def _usable_schema() -> Iterator[None]:
    """A schema xgrammar cannot compile is the caller's to fix: refused, not a failed answer."""
    try:
        yield
    except (RuntimeError, ValueError) as error:
        raise EngineRefused(f"the JSON schema cannot be used for constrained decoding: {error}") from error


# Compact JSON (no free whitespace) on both engines: a small model that loops on newlines inside
# an object would otherwise run to its token cap before closing it.
COMPACT = {"any_whitespace": False}


@functools.lru_cache(maxsize=256)  # built on the event loop for every guided vLLM request: once per schema
def grammar_text(guide: Guide) -> str:
    """The guide as an EBNF grammar (xgrammar's), for a vLLM server: the same compact JSON
    the in-process engine enforces. vLLM's own JSON-schema path allows free whitespace, and its
    request-level switch against that did not take on vLLM 0.32."""
    import xgrammar

    with _usable_schema():
        return str(xgrammar.Grammar.from_json_schema(guide.schema or ANY_OBJECT, **COMPACT))


class Guides:
    """Grammars for one tokenizer: compiled once per schema, matched once per row."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: set[int]):
        import xgrammar

        self._xgr = xgrammar
        self.info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                            stop_token_ids=sorted(stop_ids))
        self.compiler = xgrammar.GrammarCompiler(self.info, max_threads=1)
        self.vocab_size = vocab_size
        self._lock = threading.Lock()  # the compiler is shared by the request threads
        self.closers, self.quoted = closing_tokens(tokenizer.decode, len(tokenizer), vocab_size)

    def matcher(self, guide: Guide) -> Any:
        """A fresh matcher for one row."""
        with _usable_schema(), self._lock:
            grammar = self.compiler.compile_json_schema(guide.schema or ANY_OBJECT, **COMPACT)
        return self._xgr.GrammarMatcher(grammar)

    def restrict(self, logits: torch.Tensor, matchers: Sequence[Any], rows: Sequence[int],
                 closing: Sequence[bool]) -> None:
        """Mask, in place, every token each guided row may not take next; and for the rows near
        their token cap (`closing`), those the closing rule passes over (serving/closing_rule.py)."""
        bitmask = self._xgr.allocate_token_bitmask(logits.shape[0], self.vocab_size)
        for matcher, row in zip(matchers, rows):
            matcher.fill_next_token_bitmask(bitmask, row)
        self._xgr.apply_token_bitmask_inplace(logits, bitmask, indices=list(rows))
        for row in (row for row, near_cap in zip(rows, closing) if near_cap):
            prefer_closing(logits[row, : self.vocab_size], self.closers, self.quoted)


def token_logprob(raw_logits: torch.Tensor, token: int, top: int, decode: Any) -> TokenLogprob:
    """The chosen token's log-probability under the model's own distribution, and the `top`
    likeliest tokens (vLLM's default too: before temperature, top-p or a guide)."""
    logprobs = raw_logits.float().log_softmax(dim=-1)
    best = torch.topk(logprobs, top) if top else None
    alternatives = () if best is None else tuple(
        (decode([int(i)]), float(value)) for value, i in zip(best.values, best.indices))
    return TokenLogprob(decode([token]), float(logprobs[token]), alternatives)
