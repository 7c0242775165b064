"""The closing rule of guided answers (serving/closing_rule.py), as a vLLM logits processor.

It runs inside the vLLM server's own environment (`--logits-processors
serving.vllm_closing:CloseNearCap`, with tuneloop's folder on its path), so it imports nothing
but torch, transformers, vLLM and the rule itself. vLLM masks the grammar's disallowed tokens
before it runs logits processors, so in a guided request's last `VLLM_ARGUMENT` tokens (a
per-request argument, sent in `vllm_xargs`) the rule chooses among allowed tokens, as in-process.
vLLM has no such rule of its own. A server without this processor ignores the argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from serving.closing_rule import VLLM_ARGUMENT, closing_tokens, prefer_closing


class CloseNearCap(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:  # noqa: ANN001, FBT001
        from transformers import AutoTokenizer

        model = vllm_config.model_config
        tokenizer = AutoTokenizer.from_pretrained(model.tokenizer, trust_remote_code=model.trust_remote_code)
        closers, quoted = closing_tokens(tokenizer.decode, len(tokenizer), model.get_vocab_size())
        self.closers, self.quoted = closers.to(device), quoted.to(device)
        self.rows: dict[int, tuple[int, Sequence[int]]] = {}  # batch index -> (first closing position, output ids)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token is likeliest

    @staticmethod
    def _track(params, _prompt: list[int] | None,  # noqa: ANN001 (vLLM's SamplingParams)
               output: list[int]) -> tuple[int, Sequence[int]] | None:
        within = (params.extra_args or {}).get(VLLM_ARGUMENT)
        if not within or params.structured_outputs is None or params.max_tokens is None:
            return None
        return params.max_tokens - int(within), output

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._track)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        width = len(self.closers)
        for row, (closing_from, output) in self.rows.items():
            if len(output) < closing_from:
                continue
            prefer_closing(logits[row, :width], self.closers, self.quoted)
        return logits
