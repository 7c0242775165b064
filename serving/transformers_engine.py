"""The in-process engine: transformers + PEFT on one worker thread that batches requests.

Requests wait in a queue; the worker takes the first, waits `batch_wait_ms` for company
(up to `max_batch_size`), and runs them as one `generate` call. Adapter loads and unloads
go through the same queue. Once the model carries adapters, a load runs between two
decode steps of the running batch (no running row uses the new name); the first load,
which wraps the plain model, and unloads wait for the batch to pause or end.

A batch does not make newcomers wait for its longest answer: once it has made
`pause_after` tokens and a request that would fit (or an adapter load) is waiting, it
pauses; the next batch takes the newcomers and the paused requests, which go on from
their prompt plus what they have generated (one prefill again, paid only when someone
is waiting). This is continuous batching at a coarse grain, on plain `generate`.
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
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessorList
from transformers import StoppingCriteriaList

from serving.batching import BatchControl, RowSampling, RowState, RowStopping, RowStreamer
from serving.engine import BASE_ADAPTER, EngineError, GenerationRequest, StreamEvent

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
    row: RowState | None = None  # its progress, kept across batches when it is paused


@dataclass
class _Control:
    """Work for the model between batches, such as loading an adapter."""

    action: Callable[[], Any]
    done: Callable[[BaseException | None], None]
    # Safe between two decode steps of a running batch, so no pause is needed for it.
    between_steps: bool = False


class TransformersEngine:
    def __init__(
        self,
        model_path: str,
        *,
        device: str = "auto",
        max_batch_size: int = 8,
        batch_wait_ms: float = 5.0,
        pause_after: int = 16,
        model_name: str | None = None,
        threads: int | None = None,
    ):
        self.model_name = model_name or model_path
        self.device = pick_device(device)
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.pause_after = pause_after  # tokens a batch makes before it may pause for newcomers
        self.threads = threads  # on a CPU shared with other work, fewer threads than cores can be faster
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        self.eos_ids = _eos_ids(self.model.generation_config, self.tokenizer)
        self._queue: queue.Queue[_Job | _Control | None] = queue.Queue()
        self._backlog: deque[_Job] = deque()  # accepted jobs waiting for room in a batch (worker only)
        self._stopping = False
        self._worker: threading.Thread | None = None
        self.batch_sizes: list[int] = []  # how many requests each generate call served

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

    # ------------------------------------------------------------ requests

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        if self._worker is None:
            raise EngineError("the engine is not started")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StreamEvent | BaseException] = asyncio.Queue()
        job = _Job(request, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        self._queue.put(job)
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
        await self._control(lambda: self._load_adapter(name, path), between_steps=True)

    async def unload_adapter(self, name: str) -> None:
        await self._control(lambda: self._unload_adapter(name))

    def adapters(self) -> set[str]:
        config = getattr(self.model, "peft_config", None)
        return set(config) if config else set()

    async def _control(self, action: Callable[[], Any], between_steps: bool = False) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def done(error: BaseException | None) -> None:
            if error is None:
                loop.call_soon_threadsafe(future.set_result, None)
            else:
                loop.call_soon_threadsafe(future.set_exception, error)

        self._queue.put(_Control(action, done, between_steps))
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
        carried: list[_Job] = []  # requests paused mid-answer, to go on in the next batch
        while True:
            self._accept_waiting()  # adapter loads run here, between batches, even when batches are full
            if not carried and not self._backlog:
                if self._stopping:
                    return
                self._accept(self._queue.get())  # nothing to do: sleep until something arrives
                continue
            jobs = carried + self._from_backlog(self.max_batch_size - len(carried))
            jobs += self._gather(len(jobs))
            carried = self._run_batch(jobs)

    def _accept(self, item: _Job | _Control | None) -> None:
        if item is None:
            self._stopping = True  # finish what was accepted, then stop
        elif isinstance(item, _Control):
            self._run_control(item)
        else:
            self._backlog.append(item)

    def _accept_waiting(self) -> None:
        while True:
            try:
                self._accept(self._queue.get_nowait())
            except queue.Empty:
                return

    def _from_backlog(self, room: int) -> list[_Job]:
        return [self._backlog.popleft() for _ in range(min(room, len(self._backlog)))]

    def _gather(self, size: int) -> list[_Job]:
        """More jobs for a batch of `size`, waiting up to batch_wait for them to arrive."""
        more: list[_Job] = []
        deadline = time.monotonic() + self.batch_wait
        while size + len(more) < self.max_batch_size and not self._stopping:
            timeout = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            self._accept(item)
            more += self._from_backlog(self.max_batch_size - size - len(more))
        return more

    def _newcomers_waiting(self, running: int) -> bool:
        """Worth pausing the batch for: an adapter to load or unload, or a request that would fit."""
        waiting = list(self._queue.queue)  # a peek; the queue's own lock is not needed to look
        if any(not isinstance(item, _Job) for item in waiting):
            return True
        return running < self.max_batch_size and bool(waiting or self._backlog)

    def _between_steps(self) -> None:
        if any(isinstance(item, _Control) and item.between_steps for item in list(self._queue.queue)):
            self._controls_between_steps()

    def _controls_between_steps(self) -> None:
        """Run the adapter loads waiting, between two decode steps of a running batch.

        Safe only on a model that is already a PeftModel whose batch names each row's adapter:
        loading adds LoRA weights under a new name that no running row uses, and the KV cache
        of the running rows stays valid. (Wrapping a plain model would change the rows
        running on it, so the first adapter still waits for a pause.) Everything else taken
        from the queue keeps its order: jobs join the backlog, other controls go back in line.
        """
        others: list = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Control) and item.between_steps:
                self._run_control(item)
            elif isinstance(item, _Job):
                self._backlog.append(item)
            else:
                others.append(item)
        for item in others:  # unloads and the stop signal wait for the batch's end, as before
            self._queue.put(item)

    def _run_control(self, control: _Control) -> None:
        try:
            control.action()
        except BaseException as error:  # reported to the caller, never kills the worker
            control.done(error)
        else:
            control.done(None)

    def _run_batch(self, jobs: list[_Job]) -> list[_Job]:
        """Run a batch; return the jobs it paused (unfinished) to make room for newcomers."""
        self.batch_sizes.append(len(jobs))
        try:
            self._generate(jobs)
        except BaseException as error:
            log.exception("generation failed for a batch of %d", len(jobs))
            for job in jobs:
                job.emit(error)
            return []
        return [job for job in jobs if not job.row.done]

    def _generate(self, jobs: list[_Job]) -> None:
        for job in jobs:
            if job.row is None:
                prompt = self._prompt(job.request.messages)
                ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
                job.row = RowState(job.request.params, len(ids), job.emit, job.cancelled.is_set, prompt_ids=ids)
        rows = [job.row for job in jobs]
        # A paused request goes on from where it stopped: its prompt and what it has said so far.
        inputs = self.tokenizer.pad({"input_ids": [row.prompt_ids + row.token_ids for row in rows]},
                                    padding=True, return_tensors="pt").to(self.device)
        adapter_kwargs = self._adapter_kwargs(jobs)
        control = BatchControl(lambda: self._newcomers_waiting(sum(not r.done for r in rows)), self.pause_after,
                               # a PeftModel whose rows are named by adapter: loads need no pause
                               each_step=self._between_steps if adapter_kwargs else None)
        config = GenerationConfig(
            do_sample=True,  # RowSampling has already applied each row's own settings
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max(row.params.max_tokens - len(row.token_ids) for row in rows) + 1,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_ids),
        )
        self.model.generate(
            **inputs,
            generation_config=config,
            logits_processor=LogitsProcessorList([RowSampling(rows)]),
            stopping_criteria=StoppingCriteriaList([RowStopping(rows, control)]),
            streamer=RowStreamer(rows, self._decode, self.eos_ids, control),
            **adapter_kwargs,
        )

    def _adapter_kwargs(self, jobs: list[_Job]) -> dict[str, Any]:
        if not self.adapters():
            if any(job.request.adapter for job in jobs):
                raise EngineError("an adapter was asked for, but none is loaded")
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
