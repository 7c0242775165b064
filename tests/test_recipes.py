"""Every recipe end to end on the tiny model: real TRL trainers (and our PPO), a real store,
the release row and report checked; `auto`'s choice from the data; resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sqlmodel import Session, select

from feedback.export import Row
from serving.pairs import CONTRASTS
from store import releases
from store.artifacts import directory_checksum
from store.db import make_engine, session_scope
from store.migrate import upgrade
from store.models import Release, ReleaseState, RunStatus, TrainingRun
from tests.adapters import make_adapter
from tests.conftest import free_port
from tests.feedback_seed import seed
from trainer.config import NightlyConfig
from trainer.data import TrainingData
from trainer.datasets import Split
from trainer.gate import GateThresholds
from trainer.nightly import Environment, main
from trainer.recipes import choose

FAST = dict(max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=4, min_pairs=8, min_thumbs=8,
            min_prompts=4, eval_prompts=3, eval_max_tokens=6, num_generations=2, max_completion_length=6,
            rl_max_steps=2, replay_share=0.0, disable_tqdm=True, save_steps=1)
OPEN_GATE = GateThresholds.open()


@pytest.fixture
def store(tmp_path: Path, tiny_model: Path):
    """A SQLite store whose active release carries a (random) adapter, so training continues it."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    database = make_engine(url)
    upgrade(database)
    adapter = make_adapter(tiny_model, tmp_path / "active-adapter")
    with session_scope(database) as session:
        base = releases.ensure_base_release(session, base_model="tiny")
        base.state = ReleaseState.retired
        session.add(Release(name="active", base_model="tiny", adapter_path=str(adapter),
                            checksum=directory_checksum(adapter), state=ReleaseState.active))
    return database, url, adapter


def environment(url: str, tmp_path: Path, tiny_model: Path) -> Environment:
    return Environment(url, tmp_path / "var", str(tiny_model), gate=OPEN_GATE, device="cpu")


def changed(before: Path, after: Path) -> bool:
    old, new = load_file(before / "adapter_model.safetensors"), load_file(after / "adapter_model.safetensors")
    assert old.keys() == new.keys()
    return any(not torch.equal(old[k], new[k]) for k in old)


DATA = {  # what each recipe trains on
    "dpo": dict(pairs=12),
    "kto": dict(thumbs=12),
    "sft+dpo": dict(pairs=10, corrections=8),
    "rm+grpo": dict(pairs=12, unrated=6),
    "rm+ppo": dict(pairs=12, unrated=6),
    "distill": dict(contrasts={"example": (9, 1), "brief": (1, 3)}, thumbs=4, unrated=6),
}
STAGES = {"distill": ["dpo"]}


@pytest.mark.parametrize("recipe", list(DATA))
def test_each_recipe_trains_a_release(recipe, store, tmp_path, tiny_model):
    database, url, active_adapter = store
    seed(database, **DATA[recipe])
    result = main(NightlyConfig.from_flags(recipe=recipe, **FAST), environment(url, tmp_path, tiny_model))

    assert result.status == RunStatus.succeeded, result.message
    assert result.state == ReleaseState.candidate and result.report["recipe"] == recipe
    with Session(database) as session:
        release = session.exec(select(Release).where(Release.name == result.release)).one()
        run = session.get(TrainingRun, result.run_id)
    assert release.state == ReleaseState.candidate and release.training_run_id == run.id
    assert run.status == RunStatus.succeeded and run.recipe == recipe
    adapter = Path(release.adapter_path)
    assert release.checksum == directory_checksum(adapter)
    assert changed(active_adapter, adapter), "training left the adapter's parameters as they were"
    stages = result.report["training"]["stages"]
    assert list(stages) == STAGES.get(recipe, recipe.replace("rm+", "").split("+"))
    if recipe.startswith("rm+"):
        assert (adapter.parent / "reward" / "reward.json").is_file()
        assert result.report["reward_model"]["counts"]["train_pairs"] > 0
        # The reward model the policy chased is reported but does not pass it: held-out pairs decide.
        evaluation = result.report["evaluation"]
        assert evaluation["primary_judge"] is None and "reward model" in evaluation["win_rates"]
        assert result.report["gate"]["decided_by"].startswith("held-out human preference pairs")
    if recipe == "distill":
        # The style users chose, answered on training prompts only; cut-off answers left out.
        assert result.report["styles"]["example"]["won"] >= 7 and "'example'" in result.report["recipe_reason"]
        distilled = result.report["distilled"]
        assert distilled["styles"][0].startswith("'example'") and distilled["prompts"] > 0
        assert distilled["kept"] + distilled["cut_at_cap"] == distilled["prompts"]
    # The candidate answers under the style users chose (and was evaluated so); others under none.
    assert release.instruction == (CONTRASTS["example"] if recipe == "distill" else None)
    assert result.report["instruction"]["adopted"] == (["example"] if recipe == "distill" else [])
    # ... after the active release answered the golden set with it and kept its facts (the gate is open here).
    checked = result.report["instruction"]["checked"]
    assert [(t["style"], t["holds"]) for t in checked] == ([("example", True)] if recipe == "distill" else [])
    assert not (tmp_path / "var" / "runs" / str(run.id)).exists()  # checkpoints go once released


def crafted(pairs: int = 0, thumbs: int = 0, corrections: int = 0, prompts: int = 0,
            styles: dict | None = None) -> TrainingData:
    when = datetime(2026, 11, 20, tzinfo=timezone.utc)

    def rows(n: int, source: str) -> list[Row]:
        texts = [f"{source} question number {i}" for i in range(n)]
        return [Row({"prompt": [{"role": "user", "content": text}]}, source, text, when) for text in texts]

    splits = {"dpo": Split(rows(pairs, "comparison"), []), "kto": Split(rows(thumbs, "thumb"), []),
              "sft": Split(rows(corrections, "correction"), []), "prompts": Split(rows(prompts, "prompt"), [])}
    return TrainingData(splits, since=None, styles=styles or {})


def style(won: int, lost: int, tied: int = 0, both_bad: int = 0) -> dict:
    return {"won": won, "lost": lost, "tied": tied, "both_bad": both_bad}


def test_auto_distills_a_contrast_style_users_clearly_chose():
    config = NightlyConfig.from_flags(min_pairs=16, min_thumbs=32, min_prompts=16)
    chose = crafted(pairs=13, thumbs=300, prompts=40, styles={"example": style(12, 1, 2, 20), "brief": style(1, 2)})
    picked = choose(config, chose)
    assert picked.recipe == "distill" and "'example' (won 12, lost 1" in picked.reason and "brief" not in picked.reason
    # Two wins could be chance, and a style that loses as often as it wins was not chosen.
    for unclear in ({"example": style(2, 0)}, {"example": style(8, 7)}):
        assert choose(config, crafted(pairs=13, thumbs=300, prompts=40, styles=unclear)).recipe == "kto"
    # Too few training prompts to write the style's examples on.
    few = crafted(pairs=2, thumbs=10, styles={"example": style(12, 1)})
    assert choose(NightlyConfig.from_flags(min_prompts=16, min_thumbs=8), few).recipe == "kto"
    asked = choose(NightlyConfig.from_flags(recipe="distill"), crafted(pairs=20, styles={"brief": style(1, 4)}))
    assert asked.recipe is None and "brief 1-4 (won-lost)" in asked.reason


def test_auto_picks_from_the_data_and_says_why():
    config = NightlyConfig.from_flags(min_pairs=16, min_thumbs=32, min_corrections=8, min_prompts=16)
    assert choose(config, crafted(pairs=20)).recipe == "dpo"
    sft = choose(config, crafted(pairs=20, corrections=9))
    assert sft.recipe == "sft+dpo" and "9 new corrections" in sft.reason
    assert choose(config, crafted(pairs=20, corrections=3)).recipe == "dpo"
    kto = choose(config, crafted(pairs=5, thumbs=40))
    assert kto.recipe == "kto" and "40 new single verdicts" in kto.reason
    # Every signal counts: with single verdicts at least as many as pairs, KTO takes both.
    both = choose(config, crafted(pairs=20, thumbs=30))
    assert both.recipe == "kto" and "all 70 judged answers" in both.reason
    assert choose(config, crafted(pairs=20, thumbs=10)).recipe == "dpo"
    assert choose(config, crafted(pairs=20, thumbs=30, corrections=9)).recipe == "sft+kto"
    nothing = choose(config, crafted(pairs=5, thumbs=5))
    assert nothing.recipe is None and "too little new data" in nothing.reason
    # GRPO only once the reward model has proved itself and most prompts carry no feedback.
    many = crafted(pairs=20, prompts=100)
    assert choose(config, many, reward_accuracy=0.6).recipe == "dpo"
    grpo = choose(config, many, reward_accuracy=0.8)
    assert grpo.recipe == "rm+grpo" and "0.80" in grpo.reason
    # A recipe asked for that the data cannot feed stops with the reason.
    asked = choose(NightlyConfig.from_flags(recipe="kto", min_thumbs=32), crafted(pairs=10, thumbs=3))
    assert asked.recipe is None and "kto needs at least 32 new judged answers" in asked.reason


def test_a_bad_recipe_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="dpo, kto, sft\\+dpo"):
        NightlyConfig.from_flags(recipe="ppo-please")


def test_too_little_data_for_the_recipe_stops_cleanly(store, tmp_path, tiny_model):
    database, url, _ = store
    seed(database, pairs=3)
    result = main(NightlyConfig.from_flags(recipe="dpo", **FAST), environment(url, tmp_path, tiny_model))
    assert result.status == RunStatus.skipped and "needs at least 8 new preference pairs" in result.message
    with Session(database) as session:
        assert session.exec(select(Release).where(Release.state == ReleaseState.candidate)).first() is None


RUN_IN_CHILD = """
import sys
from trainer.config import NightlyConfig
from trainer.gate import GateThresholds
from trainer.nightly import Environment, main
config = NightlyConfig.from_flags(**{fast})
result = main(config, Environment({url!r}, {var!r}, {model!r}, gate=GateThresholds.open(), device="cpu"))
print("RESULT", result.status.value, result.message)
"""


def test_a_killed_run_resumes_from_its_last_checkpoint(store, tmp_path, tiny_model):
    database, url, _ = store
    seed(database, pairs=16)
    var = tmp_path / "var"
    fast = {**FAST, "recipe": "dpo", "max_steps": 400, "save_steps": 2, "reward_model": "never"}
    script = RUN_IN_CHILD.format(fast=fast, url=url, var=str(var), model=str(tiny_model))
    child = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        checkpoints = var / "runs" / "1" / "dpo" / "checkpoints"
        deadline = time.monotonic() + 120
        while not any(checkpoints.glob("checkpoint-*")) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.2)
        assert any(checkpoints.glob("checkpoint-*")), child.stdout.read().decode()[-3000:] if child.poll() else ""
        time.sleep(1.0)  # let it go on past the checkpoint, then kill it hard mid-step
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    saved = max(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))
    with Session(database) as session:
        assert session.get(TrainingRun, 1).status == RunStatus.running  # killed: nobody marked it
        assert session.exec(select(Release).where(Release.state == ReleaseState.candidate)).first() is None

    resumed = main(NightlyConfig.from_flags(**{**fast, "max_steps": saved + 2, "resume": True}),
                   environment(url, tmp_path, tiny_model))
    assert resumed.status == RunStatus.succeeded and resumed.run_id == 1, resumed.message
    with Session(database) as session:
        run = session.get(TrainingRun, 1)
    assert "resuming training run 1" in run.log
    assert f"resuming stage dpo from checkpoint-{saved}" in run.log  # not from step 1
    history = resumed.report["training"]["stages"]["dpo"]["history"]
    assert max(entry["step"] for entry in history if "loss" in entry) == saved + 2
    assert resumed.report["data"]["pairs_train"] > 0


def test_two_processes_train_one_release(store, tmp_path, tiny_model):
    """Under torchrun (as under `accelerate launch`): both processes train, the main one releases."""
    database, url, active_adapter = store
    seed(database, pairs=12)
    fast = {**FAST, "recipe": "dpo", "reward_model": "always"}
    script = tmp_path / "run.py"
    script.write_text(RUN_IN_CHILD.format(fast=fast, url=url, var=str(tmp_path / "var"), model=str(tiny_model)))
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", str(free_port()), str(script)],
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, timeout=300)
    results = sorted(line for line in launched.stdout.splitlines() if line.startswith("RESULT"))
    assert launched.returncode == 0 and len(results) == 2, launched.stderr[-3000:]
    assert any(line.startswith("RESULT succeeded Gate passed") for line in results), results  # the main one
    assert any(line.startswith("RESULT succeeded process 1 of 2: trained") for line in results), results
    with Session(database) as session:
        (release,) = session.exec(select(Release).where(Release.state == ReleaseState.candidate)).all()
        (run,) = session.exec(select(TrainingRun)).all()
    assert run.status == RunStatus.succeeded and changed(active_adapter, Path(release.adapter_path))
    assert (Path(release.adapter_path).parent / "reward" / "reward.json").is_file()


def test_feedback_counts_as_new_until_a_release_that_learned_it_goes_live(store, tmp_path, tiny_model):
    from store import releases

    database, url, _ = store
    seed(database, pairs=12)
    fast = NightlyConfig.from_flags(**{**FAST, "recipe": "dpo", "reward_model": "never"})
    first = main(fast, environment(url, tmp_path, tiny_model))
    assert first.status == RunStatus.succeeded and first.report["data"]["pairs_new"] == first.report["data"]["pairs_train"]
    with session_scope(database) as session:
        releases.approve(session, first.release, None)  # the candidate goes live: what it learned is no longer new
    again = main(NightlyConfig.from_flags(**{**FAST, "recipe": "dpo", "reward_model": "never"}), environment(url, tmp_path, tiny_model))
    assert again.status == RunStatus.skipped and "0 new pairs" in again.message


def test_a_stage_summary_reads_ppo_logs_and_averages_the_ends():
    from trainer.nightly import _summary
    from trainer.policy import StageOutcome

    # PPO logs `policy_loss` and `score`; one step's score is noise, so the ends are means.
    history = [{"step": i, "policy_loss": -0.01 * i, "score": -1.0 + i / 16} for i in range(32)]
    summary = _summary(StageOutcome("ppo", Path("unused"), history), NightlyConfig())
    assert summary["steps"] == 32
    assert summary["first reward"] == pytest.approx(sum(-1.0 + i / 16 for i in range(8)) / 8, abs=1e-4)
    assert summary["last reward"] == pytest.approx(sum(-1.0 + i / 16 for i in range(24, 32)) / 8, abs=1e-4)
    assert summary["first loss"] == pytest.approx(-0.035, abs=1e-4)
    dpo = _summary(StageOutcome("dpo", Path("unused"), [{"loss": 0.69}, {"loss": 0.5}, {"eval_loss": 0.6}]),
                   NightlyConfig())
    assert (dpo["steps"], dpo["first loss"], dpo["last loss"]) == (2, 0.69, 0.5)
