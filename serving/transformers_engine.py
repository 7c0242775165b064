"""The in-process engine: transformers + PEFT on one worker thread that batches requests.

Requests wait in a queue. The worker keeps one running batch (serving/decode.py) and
decodes it a step at a time; between two steps it admits whoever is waiting (up to
`max_batch_size`: prefilled on their own and stacked onto the batch's KV cache), drops
the rows that finished or whose client left, and runs adapter loads and unloads. So a
newcomer's first token waits for one step, not for the longest answer in flight, and
an adapter is loaded while the batch keeps going. An idle engine waits `batch_wait_ms`
after the first request for company, so a burst shares one prefill.

Each row names its adapter (PEFT's mixed-batch `adapter_names`), so rows of several
releases share a batch, and loading a new adapter changes no running row. An unload
waits until no running row uses the adapter.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from serving.batching import RowOutput, RowSampling, RowState
from serving.decode import RunningBatch
from serving import metrics
from serving.engine import BASE_ADAPTER, EngineError, Guide, GenerationRequest, StreamEvent
from serving.closing_rule import CLOSING_TOKENS
from serving.guided import Guides, token_logprob

log = logging.getLogger(__name__)


def pick_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


@dataclass
class _Job:
    """A generation request with the way back to the coroutine waiting for it."""

    request: GenerationRequest
    emit: Callable[[StreamEvent | BaseException], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    row: RowState | None = None  # its progress, once it has joined the running batch
    matcher: Any = None  # a guided request's grammar matcher, made before it is queued


@dataclass
class _Control:
    """Work on the model between two decode steps, such as loading an adapter."""

    action: Callable[[], Any]
    done: Callable[[BaseException | None], None]
    # An adapter that no running row may be using when the action runs (an unload's).
    needs_unused: str | None = None


class TransformersEngine:
    def __init__(
        self,
        model_path: str,
        *,
        device: str = "auto",
        max_batch_size: int = 8,
        batch_wait_ms: float = 5.0,
        model_name: str | None = None,
        threads: int | None = None,
    ):
        self.model_name = model_name or model_path
        self.device = pick_device(device)
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.threads = threads  # on a CPU shared with other work, fewer threads than cores can be faster
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        self.eos_ids = _eos_ids(self.model.generation_config, self.tokenizer)
        self._output = RowOutput(self._decode, self.eos_ids)
        self._guides: Guides | None = None  # made for the first guided request
        self._queue: queue.Queue[_Job | _Control | None] = queue.Queue()
        self._backlog: deque[_Job] = deque()  # accepted jobs waiting for room in the batch (worker only)
        self._controls: list[_Control] = []  # accepted adapter work waiting for its moment (worker only)
        self._stopping = False
        self._worker: threading.Thread | None = None
        # The running batch's size each time requests joined it: the latest few thousand, for tests
        # and benchmarks (Prometheus gets every one as a histogram).
        self.batch_sizes: deque[int] = deque(maxlen=4096)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._worker is None:
            self._stopping = False
            self._worker = threading.Thread(target=self._run, name="tuneloop-engine", daemon=True)
            self._worker.start()

    async def close(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._worker.join, 30)
            self._worker = None

    @property
    def started(self) -> bool:
        """Whether the worker runs (the model is loaded and requests are taken)."""
        return self._worker is not None and self._worker.is_alive()

    # ------------------------------------------------------------ requests

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        if self._worker is None:
            raise EngineError("the engine is not started")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StreamEvent | BaseException] = asyncio.Queue()
        job = _Job(request, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        if request.params.guide is not None:  # compiled here, not between two steps of the batch
            job.matcher = await asyncio.to_thread(self._matcher, request.params.guide)
        self._queue.put(job)
        metrics.QUEUE_DEPTH.set(self._queue.qsize())
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise EngineError(str(event)) from event
                yield event
                if event.completion is not None:
                    return
        finally:
            job.cancelled.set()  # a client that went away frees its row at the next step

    # ------------------------------------------------------------ adapters

    async def load_adapter(self, name: str, path: str) -> None:
        await self._control(lambda: self._load_adapter(name, path))

    async def unload_adapter(self, name: str) -> None:
        await self._control(lambda: self._unload_adapter(name), needs_unused=name)

    def adapters(self) -> set[str]:
        config = getattr(self.model, "peft_config", None)
        return set(config) if config else set()

    async def _control(self, action: Callable[[], Any], needs_unused: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def done(error: BaseException | None) -> None:
            if error is None:
                loop.call_soon_threadsafe(future.set_result, None)
            else:
                loop.call_soon_threadsafe(future.set_exception, error)

        self._queue.put(_Control(action, done, needs_unused))
        await future

    def _load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(path, adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        self.model.eval()

    def _unload_adapter(self, name: str) -> None:
        loaded = self.adapters()
        if name not in loaded:
            return
        if loaded == {name}:  # the last one: strip the LoRA layers, back to the plain base model
            self.model = self.model.unload()
        else:
            self.model.delete_adapter(name)

    # ------------------------------------------------------------ the worker

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        if self.threads:
            torch.set_num_threads(self.threads)
        running: list[_Job] = []  # the batch's rows, in the order of its cache
        batch = RunningBatch(self.device)
        while True:
            self._accept_waiting()
            self._run_controls(running)
            if not running and not self._backlog:
                if self._stopping and not self._controls:
                    return
                self._accept(self._queue.get())  # nothing to do: sleep until something arrives
                continue
            try:
                if self._backlog and len(running) < self.max_batch_size:
                    self._admit(batch, running)
                if running:
                    self._step(batch, running)
            except BaseException as error:  # a failed forward fails its batch, never the worker
                log.exception("generation failed for a batch of %d", len(running))
                for job in running:
                    job.emit(error)
                running.clear()
                batch = RunningBatch(self.device)
                continue
            self._drop_finished(batch, running)

    def _accept(self, item: _Job | _Control | None) -> None:
        if item is None:
            self._stopping = True  # finish what was accepted, then stop
        elif isinstance(item, _Control):
            self._controls.append(item)
        else:
            self._backlog.append(item)

    def _accept_waiting(self) -> None:
        while True:
            try:
                self._accept(self._queue.get_nowait())
            except queue.Empty:
                return

    def _run_controls(self, running: list[_Job]) -> None:
        """Adapter work, between two steps: a load changes no running row (each names its
        adapter), and an unload waits until no running row uses its adapter."""
        in_use = {job.request.adapter for job in running}
        waiting = []
        for control in self._controls:
            if control.needs_unused is not None and control.needs_unused in in_use:
                waiting.append(control)
                continue
            try:
                control.action()
            except BaseException as error:  # reported to the caller, never kills the worker
                control.done(error)
            else:
                control.done(None)
        self._controls = waiting

    def _gather(self, size: int) -> None:
        """Wait up to batch_wait for more requests to arrive, until `size` are in the backlog."""
        deadline = time.monotonic() + self.batch_wait
        while len(self._backlog) < size and not self._stopping:
            timeout = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                return
            self._accept(item)

    def _admit(self, batch: RunningBatch, running: list[_Job]) -> None:
        """Prefill waiting requests together and add them to the batch; each gets its first token."""
        if not running:  # an idle engine waits a moment for company, so a burst shares its prefill
            self._gather(self.max_batch_size)
        room = self.max_batch_size - len(running)
        jobs = [self._backlog.popleft() for _ in range(min(room, len(self._backlog)))]
        jobs = [job for job in jobs if not job.cancelled.is_set() and not self._refused(job) and self._tokenized(job)]
        if not jobs:
            return
        try:
            logits = batch.join(self.model, [job.row.prompt_ids for job in jobs], self.tokenizer.pad_token_id,
                                **self._adapter_kwargs(jobs))
        except Exception as error:  # a prefill that fails fails the newcomers only, not the batch
            log.exception("prefill failed for %d new requests", len(jobs))
            for job in jobs:
                job.emit(error)
            return
        running += jobs
        self.batch_sizes.append(len(running))
        metrics.BATCH_SIZE.observe(len(running))
        self._advance(jobs, logits)

    def _tokenized(self, job: _Job) -> bool:
        """Give the job its row; a prompt the chat template rejects fails that request alone."""
        try:
            ids = self.tokenizer(self._prompt(job.request.messages), add_special_tokens=False)["input_ids"]
        except Exception as error:
            job.emit(error)
            return False
        params = job.request.params
        job.row = RowState(params, len(ids), job.emit, job.cancelled.is_set, prompt_ids=ids, matcher=job.matcher,
                           logprobs=None if params.logprobs is None else [])
        return True

    def _matcher(self, guide: Guide) -> Any:
        if self._guides is None:
            self._guides = Guides(self.tokenizer, self.model.config.vocab_size, self.eos_ids)
        return self._guides.matcher(guide)

    def _refused(self, job: _Job) -> bool:
        if job.request.adapter and job.request.adapter not in self.adapters():
            job.emit(EngineError(f"adapter {job.request.adapter!r} is not loaded"))
            return True
        return False

    def _step(self, batch: RunningBatch, running: list[_Job]) -> None:
        tokens = torch.tensor([job.row.token_ids[-1] for job in running])
        logits = batch.step(self.model, tokens, **self._adapter_kwargs(running))
        self._advance(running, logits)

    def _advance(self, jobs: list[_Job], logits: torch.Tensor) -> None:
        """Sample each row's next token with its own settings (and its grammar), and stream it.
        A row with a seed draws from its own generator, so its answer does not depend on the rows
        beside it."""
        raw = logits.float()
        logits = self._guided(jobs, raw)
        probabilities = RowSampling([job.row for job in jobs])(None, logits).softmax(dim=-1)
        tokens = torch.multinomial(probabilities, num_samples=1).view(-1).tolist()
        for i, job in enumerate(jobs):
            row = job.row
            if row.params.seed is not None:
                if row.generator is None:
                    row.generator = torch.Generator(device=probabilities.device).manual_seed(row.params.seed)
                tokens[i] = int(torch.multinomial(probabilities[i], num_samples=1, generator=row.generator))
            if row.matcher is not None:
                row.matcher.accept_token(tokens[i])
            if row.logprobs is not None and tokens[i] not in self.eos_ids:
                row.logprobs.append(token_logprob(raw[i], tokens[i], row.params.logprobs, self._decode))
            self._output.advance(row, tokens[i])

    def _guided(self, jobs: list[_Job], raw: torch.Tensor) -> torch.Tensor:
        """The logits with each guided row's disallowed tokens masked (a copy: `raw` is the model's)."""
        rows = [i for i, job in enumerate(jobs) if job.row.matcher is not None]
        if not rows:
            return raw
        logits = raw.clone()
        closing = [jobs[i].row.params.max_tokens - len(jobs[i].row.token_ids) <= CLOSING_TOKENS for i in rows]
        self._guides.restrict(logits, [jobs[i].row.matcher for i in rows], rows, closing)
        return logits

    def _drop_finished(self, batch: RunningBatch, running: list[_Job]) -> None:
        for job in running:
            if not job.row.done and job.row.is_cancelled():
                job.row.finish_reason = "cancelled"  # the client has gone: nobody to tell
        keep = [i for i, job in enumerate(running) if not job.row.done]
        batch.keep(keep)
        running[:] = [running[i] for i in keep]

    def _adapter_kwargs(self, jobs: list[_Job]) -> dict[str, Any]:
        if not self.adapters():  # a plain model (requests for adapters were refused at admission)
            return {}
        return {"adapter_names": [job.request.adapter or BASE_ADAPTER for job in jobs]}

    def _prompt(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


def _eos_ids(generation_config: GenerationConfig, tokenizer: Any) -> set[int]:
    ids = generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
