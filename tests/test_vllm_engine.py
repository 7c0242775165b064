"""The vLLM engine against a real vLLM server (the CPU build, `make vllm`) serving the tiny model.

One server is started for the session (conftest's `vllm_url`, about half a minute). A "replica that is down" is a
port nobody listens on: what a crashed or unreachable server looks like to a client.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import pytest

from serving.engine import EngineError, Guide, GenerationRequest, SamplingParams, generate
from serving.vllm_engine import VLLMEngine
from serving.vllm_server import free_port
from tests.adapters import make_adapter
from tests.guided_cases import UNBOUNDED_LISTS, unbounded_list

pytestmark = pytest.mark.timeout(900)
ASK = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def adapter_dir(vllm_model, tmp_path_factory):
    return make_adapter(vllm_model, tmp_path_factory.mktemp("adapter") / "release-2")


def down() -> str:
    return f"http://127.0.0.1:{free_port()}"


def run(coroutine):
    return asyncio.run(coroutine)


async def using(urls, work):
    engine = VLLMEngine(urls, timeout_s=120)
    await engine.start()
    try:
        return await work(engine)
    finally:
        await engine.close()


def served(url: str) -> set[str]:
    return {model["id"] for model in httpx.get(f"{url}/v1/models").json()["data"]}


def test_streams_token_by_token_with_usage_counted(vllm_url):
    async def work(engine):
        request = GenerationRequest(ASK, SamplingParams(temperature=0.0, max_tokens=12))
        events = [event async for event in engine.stream(request)]
        return events

    events = run(using([vllm_url], work))
    pieces, last = [e.text for e in events if e.text], events[-1].completion
    assert len(pieces) > 1 and last is not None  # streamed in pieces, then the finished completion
    assert last.text == "".join(pieces)
    assert last.completion_tokens == 12 and last.finish_reason == "length" and last.prompt_tokens > 3


def test_a_guide_and_logprobs_are_carried_out_by_vllm(vllm_url):
    """vLLM's own constrained decoding and log-probabilities, through the engine's parameters."""
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "blue"]}, "n": {"type": "integer",
              "minimum": 0, "maximum": 9}}, "required": ["colour", "n"], "additionalProperties": False}

    async def work(engine):
        params = SamplingParams(temperature=1.0, max_tokens=40, guide=Guide(json.dumps(schema)), logprobs=2, seed=5)
        return await generate(engine, GenerationRequest(ASK, params))

    completion = run(using([vllm_url], work))
    answer = json.loads(completion.text)
    assert answer["colour"] in ("red", "blue") and 0 <= answer["n"] <= 9
    assert len(completion.logprobs) == completion.completion_tokens
    assert all(len(t.top) == 2 and t.logprob <= 0 for t in completion.logprobs)


@pytest.mark.parametrize("items", UNBOUNDED_LISTS)
def test_a_guided_answer_near_its_cap_closes_on_vllm_too(vllm_url, items):
    """The closing rule as vLLM's logits processor: the random model would fill any cap with the
    list; in its last tokens the closers win and the answer parses."""
    schema = unbounded_list(items)

    async def work(engine):
        return [await generate(engine, GenerationRequest(ASK, SamplingParams(
            temperature=1.0, max_tokens=48, guide=Guide(json.dumps(schema)), seed=seed))) for seed in range(3)]

    for completion in run(using([vllm_url], work)):
        assert completion.finish_reason == "stop", completion.text
        jsonschema.validate(json.loads(completion.text), schema)


def test_a_replica_that_is_down_is_skipped_and_all_down_is_a_clear_error(vllm_url):
    async def work(engine):
        return await generate(engine, GenerationRequest(ASK, SamplingParams(temperature=0.0, max_tokens=4)))

    assert run(using([down(), vllm_url], work)).completion_tokens == 4

    async def all_down():
        engine = VLLMEngine([down(), down()], connect_timeout_s=1)
        with pytest.raises(EngineError, match="no vLLM server answers"):
            await engine.start()
        with pytest.raises(EngineError, match="no vLLM replica could answer"):
            await generate(engine, GenerationRequest(ASK))
        await engine.close()

    run(all_down())


def test_bad_sampling_is_refused_with_the_servers_reason(vllm_url):
    async def work(engine):
        return await generate(engine, GenerationRequest(ASK, SamplingParams(max_tokens=10_000)))

    with pytest.raises(EngineError, match="refused the request \\(400\\)"):
        run(using([vllm_url], work))


def test_an_adapter_loads_on_every_replica_or_on_none(vllm_url, adapter_dir):
    async def fleet_with_one_down(engine):
        with pytest.raises(EngineError, match="on none"):
            await engine.load_adapter("release-2-a", str(adapter_dir))
        return engine.adapters()

    assert run(using([vllm_url, down()], fleet_with_one_down)) == set()
    assert "release-2-a" not in served(vllm_url)  # the replica that took it let it go again

    async def whole_fleet(engine):
        await engine.load_adapter("release-2-b", str(adapter_dir))
        assert "release-2-b" in served(vllm_url)
        on_adapter = GenerationRequest(ASK, SamplingParams(temperature=0.0, max_tokens=8), adapter="release-2-b")
        on_base = GenerationRequest(ASK, SamplingParams(temperature=0.0, max_tokens=8))
        tuned, base = await generate(engine, on_adapter), await generate(engine, on_base)
        await engine.unload_adapter("release-2-b")
        return tuned, base

    tuned, base = run(using([vllm_url], whole_fleet))
    assert tuned.text != base.text  # the request really went through the adapter
    assert "release-2-b" not in served(vllm_url)


def test_unloading_waits_for_the_requests_in_flight_on_that_adapter(vllm_url, adapter_dir):
    async def work(engine):
        await engine.load_adapter("release-2-c", str(adapter_dir))
        request = GenerationRequest(ASK, SamplingParams(temperature=0.0, max_tokens=200), adapter="release-2-c")
        stream = engine.stream(request)
        first = await anext(stream)  # the answer has begun on the adapter
        unloading = asyncio.create_task(engine.unload_adapter("release-2-c"))
        await asyncio.sleep(0.5)
        waited = not unloading.done()
        rest = [event async for event in stream]
        await unloading
        return first, rest, waited

    first, rest, waited = run(using([vllm_url], work))
    assert waited  # the unload did not cut the answer off ...
    assert rest[-1].completion is not None and rest[-1].completion.completion_tokens == 200  # ... which finished whole
    assert "release-2-c" not in served(vllm_url)


def test_a_replica_that_lost_its_adapters_gets_them_back_before_traffic(vllm_url, adapter_dir):
    """A restarted vLLM server holds no runtime adapters: here one is unloaded behind the
    engine's back, which leaves the server in exactly that state."""
    async def work(engine):
        await engine.load_adapter("release-2-d", str(adapter_dir))
        httpx.post(f"{vllm_url}/v1/unload_lora_adapter", json={"lora_name": "release-2-d"}).raise_for_status()
        assert "release-2-d" not in served(vllm_url)
        request = GenerationRequest(ASK, SamplingParams(temperature=0.0, max_tokens=4), adapter="release-2-d")
        answered = await generate(engine, request)  # the request finds it gone, and it is given back first
        assert "release-2-d" in served(vllm_url)
        httpx.post(f"{vllm_url}/v1/unload_lora_adapter", json={"lora_name": "release-2-d"}).raise_for_status()
        for _ in range(100):  # with no request at all, the engine's own check notices too
            if "release-2-d" in served(vllm_url):
                break
            await asyncio.sleep(0.1)
        back = "release-2-d" in served(vllm_url)
        await engine.unload_adapter("release-2-d")
        return answered, back

    async def checking_often(work_):  # noqa: ANN001
        engine = VLLMEngine([vllm_url], check_interval_s=0.5)
        await engine.start()
        try:
            return await work_(engine)
        finally:
            await engine.close()

    answered, back = run(checking_often(work))
    assert answered.completion_tokens == 4 and back


def test_a_released_adapter_folder_is_served_by_a_plain_vllm_server_with_lora_modules(vllm_model, adapter_dir,
                                                                                       tmp_path):
    """What `tuneloop releases export` writes (the adapter beside its model card) is what someone
    who runs vLLM themselves passes to `--lora-modules`: a server of their own, started that way,
    serves it under its name to the official client."""
    import shutil

    import openai

    from serving.vllm_server import VLLMServer, VLLMServerConfig
    from trainer import model_card

    release = tmp_path / "r7"
    shutil.copytree(adapter_dir, release)
    model_card.write(release, {"release": "r7", "run_id": 7, "recipe": "dpo", "base_release": "base",
                               "data": {"pairs_train": 28}}, str(vllm_model), str(vllm_model))
    config = VLLMServerConfig(model=str(vllm_model), dtype="float32", max_model_len=512,
                              extra_args=("--lora-modules", f"r7={release}"))
    server = VLLMServer(config, log_path=tmp_path / "vllm.log")
    url = server.start()
    try:
        assert served(url) >= {"base", "r7"}
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answers = {model: client.chat.completions.create(model=model, messages=ASK, temperature=0.0, max_tokens=8)
                   .choices[0].message.content for model in ("r7", "base")}
    finally:
        server.stop()
    assert answers["r7"] != answers["base"]  # the request went through the adapter


def test_a_cpu_server_computes_in_float32_where_the_cpu_has_no_bfloat16(monkeypatch):
    """vLLM's "auto" is bfloat16, which a CPU without it emulates at less than half the speed."""
    from serving import vllm_server
    from serving.vllm_server import VLLMServerConfig

    def dtype(config: VLLMServerConfig) -> str:
        command = config.command(8000)
        return command[command.index("--dtype") + 1]

    monkeypatch.setattr(vllm_server, "_has_cuda", lambda python: False)
    monkeypatch.setattr(vllm_server, "_cpu_has_bfloat16", lambda: False)
    assert dtype(VLLMServerConfig(model="m")) == "float32"
    assert dtype(VLLMServerConfig(model="m", dtype="bfloat16")) == "bfloat16"  # asked for: kept
    monkeypatch.setattr(vllm_server, "_cpu_has_bfloat16", lambda: True)
    assert dtype(VLLMServerConfig(model="m")) == "auto"
    monkeypatch.setattr(vllm_server, "_has_cuda", lambda python: True)
    monkeypatch.setattr(vllm_server, "_cpu_has_bfloat16", lambda: False)
    assert dtype(VLLMServerConfig(model="m")) == "auto"  # a GPU's own choice
