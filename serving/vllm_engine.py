"""An engine that is a fleet of vLLM servers, through their OpenAI-compatible API.

Each replica runs `vllm.entrypoints.openai.api_server --enable-lora` with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`. A release's adapter is loaded on every replica under
its own versioned name (`/v1/load_lora_adapter`) and a request names it in `model`, so the
release routing above (canary share, stickiness, rollback) needs nothing vLLM-specific.

- **Requests** go to the replica with the fewest requests in flight from this process; a
  replica that cannot be reached before the first token is skipped for the next, so a replica
  that is down costs a retry, not a failed turn. Once text has streamed, an error ends the
  turn with EngineError (the user has seen half an answer; sending it again elsewhere would
  repeat it). Closing the stream (a client that went away) closes the upstream connection,
  and vLLM aborts a request whose client disconnects.
- **Adapters** load in two phases: on every replica, each warmed by a one-token generation
  (vLLM loads an adapter's weights on its first request, seconds on a CPU), and only then is
  the name served. If one replica fails, the adapter is unloaded from those that took it and
  the load fails, so no replica ever routes to a release another one lacks.
- **Unloading** waits until the requests in flight on that adapter are done.
- **A replica that restarts** comes back without runtime adapters. Every few seconds, and as
  soon as a request finds it unreachable or missing an adapter, the engine compares the
  replica's `/v1/models` with what it serves; until the missing adapters are loaded and
  warmed there again, the replica gets no traffic (unless no other replica can answer).

The OpenAI SDK streams the answers (it parses the server-sent events and maps errors); the
LoRA routes are vLLM's own, not OpenAI's, and go through plain httpx.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
from asgi_correlation_id import correlation_id

from serving.closing_rule import CLOSING_TOKENS, VLLM_ARGUMENT
from serving.engine import (Completion, EngineError, EngineRefused, GenerationRequest, SamplingParams, StreamEvent,
                            TokenLogprob)
from serving.guided import grammar_text
from serving.vllm_server import VLLMServer

log = logging.getLogger(__name__)

WARM_UP = [{"role": "user", "content": "Hi"}]


@dataclass
class Replica:
    url: str
    api: openai.AsyncOpenAI
    admin: httpx.AsyncClient
    in_flight: int = 0
    adapters: Counter = field(default_factory=Counter)  # adapter -> requests in flight on it here
    ready: bool = True  # answers, and holds every adapter the engine serves


class VLLMEngine:
    def __init__(self, urls: Sequence[str] = (), *, api_key: str | None = None, timeout_s: float = 120.0,
                 model_name: str | None = None, connect_timeout_s: float = 5.0, server: VLLMServer | None = None,
                 check_interval_s: float = 5.0) -> None:
        """`urls`: the fleet; or `server`, a local server this engine starts and stops."""
        urls = [server.url] if server is not None else list(urls)
        if not urls:
            raise ValueError("the vLLM engine needs at least one server URL (TUNELOOP_VLLM_URLS)")
        self.server = server
        self.model_name = model_name or ""  # set from the servers' base model on start, unless given
        self._base = ""  # the name the servers serve the base model under
        timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.replicas = [
            Replica(base,
                    openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=api_key or "unused", timeout=timeout,
                                       max_retries=0),  # failing over is this engine's job, not the SDK's
                    httpx.AsyncClient(base_url=base, timeout=timeout, headers=headers))
            for base in (url.rstrip("/") for url in urls)
        ]
        self._served: dict[str, str] = {}  # adapter name -> path, loaded on every replica
        self._idle: dict[str, asyncio.Event] = {}
        self.check_interval_s = check_interval_s
        self._watcher: asyncio.Task | None = None
        self._syncing: dict[str, asyncio.Task] = {}  # replica url -> its resync in progress

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Check that at least one replica answers (the others are tried again per request) and
        learn the name its base model is served under."""
        if self.server is not None:
            await asyncio.to_thread(self.server.start)
        healthy = await asyncio.gather(*(self._healthy(r) for r in self.replicas))
        if not any(healthy):
            raise EngineError(f"no vLLM server answers at {', '.join(r.url for r in self.replicas)}")
        replica = next(r for r, ok in zip(self.replicas, healthy) if ok)
        models = (await replica.api.models.list()).data
        self._base = next(m.id for m in models if not getattr(m, "parent", None))  # adapters have a parent
        self.model_name = self.model_name or self._base
        for replica, ok in zip(self.replicas, healthy):
            replica.ready = ok
        self._watcher = asyncio.create_task(self._watch(), name="vllm-replicas")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for task in self._syncing.values():
            task.cancel()
        for replica in self.replicas:
            await replica.api.close()
            await replica.admin.aclose()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)

    async def _healthy(self, replica: Replica) -> bool:
        try:
            return (await replica.admin.get("/health")).status_code == 200
        except httpx.HTTPError:
            return False

    # ------------------------------------------------------------ requests

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        model = request.adapter or self._base
        if request.adapter and request.adapter not in self._served:
            raise EngineError(f"adapter {request.adapter!r} is not loaded")
        failures, order, resynced = [], self._route_order(), set()
        while order:
            replica = order[0]
            started = False
            self._enter(replica, request.adapter)
            try:
                async for event in self._stream_from(replica, model, request):
                    started = True
                    yield event
                return
            except (openai.APIConnectionError, openai.InternalServerError, openai.NotFoundError) as error:
                if started:
                    raise EngineError(f"vLLM at {replica.url} failed mid-answer: {error}") from error
                failures.append(f"{replica.url}: {error}")
                if isinstance(error, openai.NotFoundError) and replica.url not in resynced:
                    # It lost the adapter (a restart): give it back, then ask it again.
                    resynced.add(replica.url)
                    await self._check(replica)
                    if replica.ready:
                        continue
                log.warning("vLLM at %s cannot answer, trying the next replica: %s", replica.url, error)
                self._resync_soon(replica)
            except openai.APIStatusError as error:
                kind = EngineRefused if error.status_code < 500 else EngineError
                raise kind(f"vLLM refused the request ({error.status_code}): {_message(error)}") from error
            finally:
                self._leave(replica, request.adapter)
            order.pop(0)
        raise EngineError("no vLLM replica could answer: " + "; ".join(failures))

    async def _stream_from(self, replica: Replica, model: str, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        params = request.params
        stream = await replica.api.chat.completions.create(
            model=model, messages=request.messages, stream=True, stream_options={"include_usage": True},
            temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens,
            stop=list(params.stop) or None, seed=params.seed, **_vllm_options(params),
            # vLLM names the request by this header in its logs: the same id as tuneloop's.
            extra_headers={"X-Request-Id": rid} if (rid := correlation_id.get()) else None,
        )
        finish, text = "stop", []
        logprobs = None if params.logprobs is None else []
        async with stream:  # leaving early closes the connection
            async for chunk in stream:
                for choice in chunk.choices:
                    piece = choice.delta.content or ""
                    if piece:
                        text.append(piece)
                        yield StreamEvent(text=piece)
                    if logprobs is not None and choice.logprobs and choice.logprobs.content:
                        logprobs += [_token_logprob(t) for t in choice.logprobs.content]
                    finish = choice.finish_reason or finish
                if chunk.usage is not None:
                    yield StreamEvent(completion=Completion("".join(text), "length" if finish == "length" else "stop",
                                                            chunk.usage.prompt_tokens, chunk.usage.completion_tokens,
                                                            logprobs))
                    return
        raise EngineError(f"vLLM at {replica.url} ended the stream without its usage")

    def _route_order(self) -> list[Replica]:
        """Least outstanding requests first; replicas still catching up only after all others."""
        return sorted(self.replicas, key=lambda r: (not r.ready, r.in_flight))

    # ------------------------------------------------------------ replicas that come back

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            await asyncio.gather(*(self._check(r) for r in self.replicas), return_exceptions=True)

    def _resync_soon(self, replica: Replica) -> None:
        replica.ready = False
        if replica.url not in self._syncing:
            task = asyncio.create_task(self._check(replica), name=f"vllm-resync {replica.url}")
            self._syncing[replica.url] = task
            task.add_done_callback(lambda _: self._syncing.pop(replica.url, None))

    async def _check(self, replica: Replica) -> None:
        """Give `replica` the adapters it lacks (load and warm), then traffic again."""
        try:
            held = {model.id for model in (await replica.api.models.list()).data}
        except openai.APIError:
            replica.ready = False
            return
        missing = {name: path for name, path in self._served.items() if name not in held}
        if missing:
            replica.ready = False
            log.warning("vLLM at %s lacks %s (restarted?): loading before it gets traffic", replica.url,
                        ", ".join(missing))
            try:
                for name, path in missing.items():
                    await self._load_on(replica, name, path)
            except (EngineError, openai.APIError, httpx.HTTPError) as error:
                log.warning("vLLM at %s could not take the live adapters yet: %s", replica.url, error)
                return
        replica.ready = True

    def _enter(self, replica: Replica, adapter: str | None) -> None:
        replica.in_flight += 1
        if adapter:
            replica.adapters[adapter] += 1
            self._idle.setdefault(adapter, asyncio.Event()).clear()

    def _leave(self, replica: Replica, adapter: str | None) -> None:
        replica.in_flight -= 1
        if adapter:
            replica.adapters[adapter] -= 1
            if not any(r.adapters[adapter] for r in self.replicas):
                self._idle.setdefault(adapter, asyncio.Event()).set()

    # ------------------------------------------------------------ adapters

    async def load_adapter(self, name: str, path: str) -> None:
        """Load `name` on every replica and warm it there; all or none (see the module's note)."""
        if name in self._served:
            return
        results = await asyncio.gather(*(self._load_on(r, name, path) for r in self.replicas), return_exceptions=True)
        failed = [f"{r.url}: {e}" for r, e in zip(self.replicas, results) if isinstance(e, BaseException)]
        if failed:
            # Everywhere, not only where it warmed: a replica can take the name and then fail its warm-up.
            await asyncio.gather(*(self._unload_on(r, name) for r in self.replicas), return_exceptions=True)
            raise EngineError(f"adapter {name!r} not loaded on every replica, so on none: " + "; ".join(failed))
        self._served[name] = path

    async def _load_on(self, replica: Replica, name: str, path: str) -> None:
        # The servers read the adapter from their own disk: a shared volume at the same path for a fleet.
        where = str(Path(path).resolve())
        response = await replica.admin.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": where})
        if response.status_code >= 400 and "already been loaded" not in response.text:
            raise EngineError(f"load_lora_adapter answered {response.status_code}: {response.text[:300]}")
        # The first request on an adapter pays for loading its weights: pay it here, not a user.
        await replica.api.chat.completions.create(model=name, messages=WARM_UP, max_tokens=1, temperature=0.0)

    async def unload_adapter(self, name: str) -> None:
        """Stop serving `name`, then unload it everywhere once its requests in flight are done."""
        if self._served.pop(name, None) is None:
            return
        idle = self._idle.get(name)
        if idle is not None and any(r.adapters[name] for r in self.replicas):
            await idle.wait()
        await asyncio.gather(*(self._unload_on(r, name) for r in self.replicas), return_exceptions=True)

    async def _unload_on(self, replica: Replica, name: str) -> None:
        response = await replica.admin.post("/v1/unload_lora_adapter", json={"lora_name": name})
        if response.status_code >= 400 and response.status_code != 404:  # 404: it never took it
            log.warning("vLLM at %s did not unload %s: %s", replica.url, name, response.text[:300])

    def adapters(self) -> set[str]:
        return set(self._served)


def _vllm_options(params: SamplingParams) -> dict:
    """Log-probabilities in OpenAI's parameters, and a guide as vLLM's own grammar field
    (its constrained decoding is xgrammar's too) with the closing rule near the cap."""
    options: dict = {}
    if params.logprobs is not None:
        options.update(logprobs=True, top_logprobs=params.logprobs)
    if params.guide is not None:
        options["extra_body"] = {"structured_outputs": {"grammar": grammar_text(params.guide)},
                                 "vllm_xargs": {VLLM_ARGUMENT: CLOSING_TOKENS}}
    return options


def _token_logprob(entry) -> TokenLogprob:  # noqa: ANN001 (the openai SDK's ChatCompletionTokenLogprob)
    return TokenLogprob(entry.token, entry.logprob, tuple((t.token, t.logprob) for t in entry.top_logprobs or ()))


def _message(error: openai.APIStatusError) -> str:
    return error.message  # the SDK's reading of the OpenAI-shaped error body vLLM sends
