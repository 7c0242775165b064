"""Real LoRA adapters and release rows for tests of approval and hot swap."""

from __future__ import annotations

from pathlib import Path

import torch
from sqlalchemy.engine import Engine

from store import releases, users
from store.artifacts import directory_checksum
from store.db import session_scope
from store.models import Release, ReleaseState, Role


def make_adapter(model_dir: Path, out: Path, seed: int = 1, alpha: int = 64) -> Path:
    """A LoRA adapter with random weights (not PEFT's zero init), so it changes answers;
    a smaller `alpha` changes them less (a real model then still speaks, and runs on)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=8, lora_alpha=alpha, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out)
    return out


def add_candidate(database: Engine, name: str, adapter: Path, instruction: str | None = None) -> Release:
    with session_scope(database) as session:
        base = releases.active_release(session)
        release = Release(name=name, base_model=base.base_model, adapter_path=str(adapter),
                          checksum=directory_checksum(adapter), state=ReleaseState.candidate, instruction=instruction,
                          report={"gate": {"passed": True, "summary": "Gate passed: test release"}})
        session.add(release)
        session.flush()
        return release


def operator_token(database: Engine, name: str = "olga") -> str:
    with session_scope(database) as session:
        user = users.get_or_create_user(session, external_id=f"local:{name}", name=name, role=Role.operator)
        return users.issue_token(session, user=user)
