"""The model card in each release's adapter folder (its README.md, where the Hugging Face Hub and
PEFT look for one): what it was trained from and on, how, how it did at the gate, and how to
load it with plain PEFT or with vLLM. Written before the release's checksum is taken, so the card
is part of what serving verifies."""

from __future__ import annotations

import re
from pathlib import Path

from jinja2 import Template

# The embedded model's own card (SmolLM2-135M-Instruct, Hugging Face) says Apache 2.0.
EMBEDDED_LICENSE = "apache-2.0"
# tuneloop's name for a base model -> the Hub's, so the card's metadata means something elsewhere.
HUB_NAMES = {"embedded:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}

CARD = Template('''---
base_model: {{ base_model }}
library_name: peft
license: {{ license }}
tags: [tuneloop, lora, {{ recipe }}]
---

# {{ name }}

A LoRA adapter for `{{ base_model }}`, trained by tuneloop's nightly run {{ run_id }} from the
preferences of its own users, and gated against the release that was serving then
(`{{ base_release }}`).

- **Recipe**: {{ recipe }} ({{ recipe_reason }})
- **Gate**: {{ gate_summary }}
{%- if instruction %}
- **Instruction**: tuneloop serves this release with `{{ instruction }}` appended to each user message (where
  only the model reads it), and evaluated it that way: append it too where you serve the adapter yourself
{%- endif %}
{%- if win_rate %}
- **Win rate against {{ base_release }}**: {{ "%.3f"|format(win_rate.rate) }} (95% {{ "%.3f"|format(win_rate.low) }}–{{ "%.3f"|format(win_rate.high) }}) on {{ win_rate.n }} held-out prompts
{%- endif %}
- **License**: {{ license }}, the base model's{% if license == "unknown" %} (see its own card){% endif %}

## Data

| what | rows |
|---|---|
{%- for key, value in data %}
| {{ key }} | {{ value }} |
{%- endfor %}

## Use

With PEFT:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM

model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{{ base_model }}"), "PATH/TO/THIS/FOLDER")
```

With vLLM:

```
vllm serve {{ base_model }} --enable-lora --max-lora-rank {{ rank }} --lora-modules {{ name }}=PATH/TO/THIS/FOLDER
```
''')


def base_license(model_path: str) -> str:
    """The base model's license, from its own card's metadata where it has one."""
    card = Path(model_path) / "README.md"
    if card.is_file():
        found = re.search(r"^license:\s*(\S+)", card.read_text(encoding="utf-8", errors="replace"), re.MULTILINE)
        if found:
            return found.group(1)
    return EMBEDDED_LICENSE if "smollm2-135m-instruct" in str(model_path).lower() else "unknown"


def write(adapter_dir: Path, body: dict, base_model: str, model_path: str) -> Path:
    import json

    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    data = [(key, value) for key, value in (body.get("data") or {}).items() if isinstance(value, int)]
    card = CARD.render(name=body["release"], base_model=HUB_NAMES.get(base_model, base_model),
                       license=base_license(model_path),
                       recipe=body["recipe"], recipe_reason=body.get("recipe_reason", ""), run_id=body["run_id"],
                       base_release=body["base_release"], gate_summary=(body.get("gate") or {}).get("summary", ""),
                       win_rate=(body.get("evaluation") or {}).get("win_rate"), data=data, rank=config.get("r", 16),
                       instruction=(body.get("instruction") or {}).get("text"))
    path = Path(adapter_dir) / "README.md"
    path.write_text(card, encoding="utf-8")
    return path
