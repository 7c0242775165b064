"""The in-process engine: batching, per-row sampling and stopping, cancellation, adapters."""

from __future__ import annotations

import asyncio

import pytest
import torch

from serving.batching import RowSampling, RowState, _safe_prefix
from serving.engine import GenerationRequest, SamplingParams, generate

PROMPT = [{"role": "user", "content": "Tell me about tea."}]


def run(coroutine):
    return asyncio.run(coroutine)


async def started(engine):
    await engine.start()
    return engine


def greedy(max_tokens: int = 8, stop: tuple[str, ...] = ()) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, stop=stop)


def test_concurrent_requests_share_a_batch_and_keep_their_own_caps(tiny_engine):
    async def scenario():
        engine = await started(tiny_engine)
        engine.batch_sizes.clear()
        caps = [3, 5, 8, 12]
        requests = [GenerationRequest([{"role": "user", "content": f"Question {i}"}], greedy(cap)) for i, cap in enumerate(caps)]
        completions = await asyncio.gather(*(generate(engine, r) for r in requests))
        await engine.close()
        return caps, completions, list(engine.batch_sizes)

    caps, completions, batch_sizes = run(scenario())
    assert max(batch_sizes) > 1, batch_sizes  # served together, not one by one
    for cap, completion in zip(caps, completions):
        assert completion.completion_tokens <= cap
        assert completion.finish_reason == "length" or completion.completion_tokens < cap


def test_greedy_is_repeatable_and_stops_on_a_stop_string(tiny_engine):
    async def scenario():
        engine = await started(tiny_engine)
        first = await generate(engine, GenerationRequest(PROMPT, greedy(10)))
        again = await generate(engine, GenerationRequest(PROMPT, greedy(10)))
        stop = first.text[4:6]
        stopped = await generate(engine, GenerationRequest(PROMPT, greedy(10, (stop,))))
        await engine.close()
        return first, again, stop, stopped

    first, again, stop, stopped = run(scenario())
    assert first.text == again.text and len(stop) == 2
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text and first.text.startswith(stopped.text)


def test_streamed_pieces_add_up_to_the_completion(tiny_engine):
    async def scenario():
        engine = await started(tiny_engine)
        events = [event async for event in engine.stream(GenerationRequest(PROMPT, greedy(10)))]
        await engine.close()
        return events

    events = run(scenario())
    assert events[-1].completion is not None and all(e.completion is None for e in events[:-1])
    assert "".join(e.text for e in events[:-1]) == events[-1].completion.text


def test_a_client_that_leaves_frees_its_row(tiny_engine):
    async def scenario():
        engine = await started(tiny_engine)
        long_one = engine.stream(GenerationRequest(PROMPT, greedy(400)))
        await long_one.__anext__()  # the first piece arrives, then the client goes away
        await long_one.aclose()
        # The next request is answered promptly: the abandoned row stopped at the next step.
        done = await asyncio.wait_for(generate(engine, GenerationRequest(PROMPT, greedy(4))), timeout=60)
        await engine.close()
        return done

    assert run(scenario()).completion_tokens <= 4


def test_row_sampling_applies_each_rows_settings():
    rows = [RowState(SamplingParams(temperature=0.0), 1, print),
            RowState(SamplingParams(temperature=1.0, top_p=0.5), 1, print),
            RowState(SamplingParams(temperature=1.0, top_p=1.0), 1, print)]
    # Probabilities 0.4, 0.3, 0.2, 0.1 for every row.
    scores = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]] * 3))
    out = RowSampling(rows)(torch.zeros(3, 1, dtype=torch.long), scores)
    kept = torch.isfinite(out)
    assert kept[0].tolist() == [True, False, False, False]  # greedy: the best token only
    assert kept[1].tolist() == [True, True, False, False]  # top_p 0.5: 0.4 then 0.3 reaches it
    assert kept[2].all()


def test_text_that_could_begin_a_stop_string_is_held_back():
    assert _safe_prefix("Hello wor", ("world",)) == "Hello "
    assert _safe_prefix("Hello", ("world",)) == "Hello"


@pytest.fixture(scope="module")
def random_adapter(tiny_model, tmp_path_factory):
    """A LoRA adapter with random (not zero) weights, so it visibly changes the output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("adapter")
    get_peft_model(base, config).save_pretrained(path)
    return str(path)


def test_adapters_load_switch_per_request_and_unload(tiny_model, random_adapter):
    from serving.transformers_engine import TransformersEngine

    async def scenario():
        engine = await started(TransformersEngine(str(tiny_model), device="cpu"))
        base = await generate(engine, GenerationRequest(PROMPT, greedy(10)))
        await engine.load_adapter("release-7", random_adapter)
        mixed = await asyncio.gather(
            generate(engine, GenerationRequest(PROMPT, greedy(10), adapter="release-7")),
            generate(engine, GenerationRequest(PROMPT, greedy(10))),
        )
        loaded = engine.adapters()
        await engine.unload_adapter("release-7")
        after = await generate(engine, GenerationRequest(PROMPT, greedy(10)))
        await engine.close()
        return base, mixed, loaded, engine.adapters(), after

    base, (tuned, plain), loaded, remaining, after = run(scenario())
    assert loaded == {"release-7"} and remaining == set()
    assert tuned.text != base.text
    assert plain.text == base.text == after.text


def test_a_newcomer_does_not_wait_for_the_longest_answer(tiny_engine):
    async def scenario():
        engine = await started(tiny_engine)
        order: list[str] = []
        hello = GenerationRequest([{"role": "user", "content": "Hi"}], greedy(4))
        alone = await generate(engine, hello)

        async def long_answer():
            pieces = []
            async for event in engine.stream(GenerationRequest(PROMPT, greedy(300))):
                pieces.append(event)
            order.append("long")
            return pieces

        running = asyncio.create_task(long_answer())
        while not engine.batch_sizes or len(engine.batch_sizes) < 1:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the long answer's batch is under way
        short = await generate(engine, hello)
        order.append("short")
        pieces = await running
        await engine.close()
        return order, alone, short, pieces

    order, alone, short, pieces = run(scenario())
    assert order == ["short", "long"]  # the newcomer joined the running batch rather than waiting for it
    assert short.completion_tokens <= 4 and short.text == alone.text  # joining changed nothing it said
    final = pieces[-1].completion
    assert final.completion_tokens == 300 or final.finish_reason == "stop"
    assert "".join(p.text for p in pieces[:-1]) == final.text  # the long answer went on seamlessly


def test_an_adapter_loads_while_a_full_batch_is_running(tiny_model, random_adapter):
    from serving.transformers_engine import TransformersEngine

    async def scenario():
        engine = await started(TransformersEngine(str(tiny_model), device="cpu", max_batch_size=4))
        long_ones = [asyncio.create_task(generate(engine, GenerationRequest(PROMPT, greedy(400)))) for _ in range(4)]
        while not engine.batch_sizes:
            await asyncio.sleep(0.01)
        await engine.load_adapter("release-9", random_adapter)  # the first load wraps the running model
        loaded_while_running = not any(task.done() for task in long_ones)
        completions = await asyncio.gather(*long_ones)
        await engine.close()
        return loaded_while_running, completions

    loaded_while_running, completions = run(scenario())
    assert loaded_while_running
    assert all(c.completion_tokens == 400 or c.finish_reason == "stop" for c in completions)


def test_a_second_adapter_loads_between_steps_without_pausing_the_batch(tiny_model, random_adapter):
    from serving.transformers_engine import TransformersEngine

    async def scenario():
        engine = await started(TransformersEngine(str(tiny_model), device="cpu", max_batch_size=4))
        await engine.load_adapter("release-1", random_adapter)
        solo = await generate(engine, GenerationRequest(PROMPT, greedy(60), adapter="release-1"))
        batches_before = len(engine.batch_sizes)
        running = [asyncio.create_task(generate(engine, GenerationRequest(PROMPT, greedy(60), adapter="release-1")))
                   for _ in range(2)]
        while len(engine.batch_sizes) == batches_before:
            await asyncio.sleep(0.01)
        await engine.load_adapter("release-2", random_adapter)
        loaded_while_running = not any(task.done() for task in running)
        completions = await asyncio.gather(*running)
        batches = len(engine.batch_sizes) - batches_before
        await engine.close()
        return solo, loaded_while_running, completions, batches, engine.adapters()

    solo, loaded_while_running, completions, batches, adapters = run(scenario())
    assert loaded_while_running and batches == 1  # the two rows were admitted once and ran on
    assert adapters == {"release-1", "release-2"}
    assert all(c.text == solo.text for c in completions)  # the running rows were not disturbed


def test_a_request_that_cannot_be_prefilled_fails_alone(tiny_engine):
    from serving.engine import EngineError

    async def scenario():
        engine = await started(tiny_engine)
        running = asyncio.create_task(generate(engine, GenerationRequest(PROMPT, greedy(60))))
        await asyncio.sleep(0.05)  # it may be running or about to join with the bad one: either way it goes on
        bad = GenerationRequest([{"role": "user", "content": None}], greedy(4))  # the chat template rejects it
        with pytest.raises(EngineError):
            await asyncio.wait_for(generate(engine, bad), timeout=60)
        answer = await running
        after = await generate(engine, GenerationRequest(PROMPT, greedy(4)))
        await engine.close()
        return answer, after

    answer, after = run(scenario())
    assert answer.completion_tokens == 60 or answer.finish_reason == "stop"  # the running answer went on
    assert after.completion_tokens <= 4  # and the engine still serves
