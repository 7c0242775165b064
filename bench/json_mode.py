"""JSON mode: how many answers parse and validate, with constrained decoding against without.

50 varied prompts (ten kinds of structured answer, five prompts each), each sent twice through
the running service with the official `openai` client, interleaved in one run:

- guided: `response_format` json_schema, as a caller of a structured-output API sends it;
- asked: the same schema only in the prompt ("answer with JSON matching ..."), no constraint.

Printed: the share of answers that parse as JSON and validate against the schema, per mode, and
tokens per second of each (the cost of the grammar), with the sampling settings as served.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/json_mode.py                   # embedded SmolLM2-135M, in-process
    HF_HUB_OFFLINE=1 .venv/bin/python bench/json_mode.py --engine vllm     # through vLLM (make vllm)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jsonschema  # noqa: E402
import openai  # noqa: E402

from bench._service import model_path, service  # noqa: E402

STRING, INT = {"type": "string"}, {"type": "integer"}
KINDS = {
    "person": ({"type": "object", "properties": {"name": STRING, "age": INT, "city": STRING},
                "required": ["name", "age", "city"], "additionalProperties": False},
               ["Invent a character for a novel set in Lisbon.", "Describe a typical customer of a bike shop.",
                "Who could be the next mayor of a small town? Make someone up.",
                "Create a profile for a retired teacher.", "Give me a fictional astronaut."]),
    "sentiment": ({"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]},
                                                    "confidence": {"type": "number"}},
                   "required": ["sentiment", "confidence"]},
                  ["Classify: 'The food was cold and the waiter rude.'", "Classify: 'Best concert of my life!'",
                   "Classify: 'The parcel arrived on Tuesday.'", "Classify: 'I can't believe how slow this is.'",
                   "Classify: 'Not bad, could be better.'"]),
    "recipe": ({"type": "object", "properties": {"title": STRING, "ingredients": {"type": "array", "items": STRING},
                                                 "minutes": INT},
                "required": ["title", "ingredients", "minutes"]},
               ["A quick pasta dinner.", "Something with lentils.", "A breakfast for two.",
                "A dessert without an oven.", "A soup for a cold day."]),
    "event": ({"type": "object", "properties": {"title": STRING, "date": STRING, "attendees": {"type": "array",
               "items": STRING}}, "required": ["title", "date", "attendees"]},
              ["Extract the event: 'Team lunch on Friday with Ana and Raj.'",
               "Extract the event: 'Board meeting 3 March, Lee, Kim and Ola attend.'",
               "Extract the event: 'Sam's birthday party next Saturday, everyone from the lab.'",
               "Extract the event: 'Quarterly review on 12 June with the finance team.'",
               "Extract the event: 'Dentist on Monday.'"]),
    "product": ({"type": "object", "properties": {"name": STRING, "price": {"type": "number"},
                                                  "in_stock": {"type": "boolean"}},
                 "required": ["name", "price", "in_stock"]},
                ["A product listing for a coffee grinder.", "List a used bicycle for sale.",
                 "A new laptop in a shop's catalogue.", "Describe a garden hose for a web shop.",
                 "A pair of running shoes, on sale."]),
    "translation": ({"type": "object", "properties": {"source_language": STRING, "text": STRING,
                                                      "english": STRING},
                     "required": ["source_language", "text", "english"]},
                    ["Translate 'bonjour tout le monde'.", "Translate 'danke schön'.", "Translate 'gracias amigo'.",
                     "Translate 'buongiorno'.", "Translate 'obrigado'."]),
    "todo": ({"type": "object", "properties": {"tasks": {"type": "array", "items": {"type": "object", "properties": {
              "task": STRING, "done": {"type": "boolean"}}, "required": ["task", "done"]}}}, "required": ["tasks"]},
             ["My to-do list for moving house.", "Tasks before a job interview.", "What to do before a trip abroad.",
              "A cleaning plan for the weekend.", "Steps to launch a small website."]),
    "answer": ({"type": "object", "properties": {"answer": STRING, "sources": {"type": "array", "items": STRING}},
                "required": ["answer"]},
               ["Why is the sky blue?", "What is the capital of Australia?", "How many legs does a spider have?",
                "Who wrote Pride and Prejudice?", "What does DNA stand for?"]),
    "rating": ({"type": "object", "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5},
                                                 "summary": STRING}, "required": ["stars", "summary"]},
               ["Rate the film Jaws.", "Rate a hotel with a broken lift but a great view.",
                "Rate a phone whose battery lasts two days.", "Rate the city of Paris for tourists.",
                "Rate a restaurant that forgot our order."]),
    "address": ({"type": "object", "properties": {"street": STRING, "number": STRING, "postcode": STRING,
                                                  "country": STRING},
                 "required": ["street", "number", "postcode", "country"]},
                ["Parse: '221B Baker Street, London NW1 6XE, UK'.", "Parse: '1600 Pennsylvania Ave, 20500, USA'.",
                 "Parse: 'Karl Johans gate 1, 0154 Oslo, Norway'.", "Parse: 'Rue de Rivoli 99, 75001 Paris'.",
                 "Parse: 'Unter den Linden 6, 10117 Berlin'."]),
}


def cases() -> list[tuple[str, dict, str]]:
    return [(kind, schema, prompt) for kind, (schema, prompts) in KINDS.items() for prompt in prompts]


def valid(text: str | None, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text or ""), schema)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


async def one(client: openai.AsyncOpenAI, kind: str, schema: dict, prompt: str, guided: bool) -> tuple[bool, int, float]:
    if guided:
        messages = [{"role": "user", "content": f"{prompt} Answer in JSON."}]
        extra = {"response_format": {"type": "json_schema", "json_schema": {"name": kind, "schema": schema}}}
    else:
        messages = [{"role": "user", "content": f"{prompt} Answer only with JSON matching this schema: "
                                                f"{json.dumps(schema)}"}]
        extra = {}
    started = time.perf_counter()
    completion = await client.chat.completions.create(model="tuneloop", messages=messages, **extra)
    seconds = time.perf_counter() - started
    choice = completion.choices[0]
    ok = valid(choice.message.content, schema)
    if guided and not ok:  # what a constrained answer that fails looks like, to tell why
        print(f"invalid {kind} ({choice.finish_reason}, {completion.usage.completion_tokens} tokens): "
              f"...{(choice.message.content or '')[-120:]!r}", file=sys.stderr)
    return ok, completion.usage.completion_tokens, seconds


async def run(base: str, concurrency: int) -> dict[str, list[tuple[bool, int, float]]]:
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)
    results: dict[str, list] = {"guided": [], "asked": []}

    async def task(case: tuple[str, dict, str], guided: bool) -> None:
        async with gate:
            results["guided" if guided else "asked"].append(await one(client, *case, guided))

    # Interleaved, so both modes share the machine's state alike.
    await asyncio.gather(*(task(case, guided) for case in cases() for guided in (True, False)))
    done = sum(len(r) for r in results.values())
    print(f"{done} answers", file=sys.stderr)
    return results


def report(results: dict[str, list[tuple[bool, int, float]]]) -> None:
    print(f"{'mode':<8} {'valid':>10} {'tokens':>8} {'tok/s per answer':>18}")
    speed = {}
    for mode, rows in results.items():
        ok = sum(r[0] for r in rows)
        speed[mode] = sum(r[1] for r in rows) / sum(r[2] for r in rows)
        print(f"{mode:<8} {ok:>4}/{len(rows):<5} {sum(r[1] for r in rows):>8} {speed[mode]:>18.1f}")
    print(f"guided/asked tokens per second: {speed['guided'] / speed['asked']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="'tiny', a folder, or the embedded SmolLM2-135M (default)")
    parser.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data, service(Path(data), model_path(args.model),
                                                        {"ENGINE": args.engine}) as base:
        report(asyncio.run(run(base, args.concurrency)))


if __name__ == "__main__":
    main()
