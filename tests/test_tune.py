"""`tuneloop tune`: an Optuna study over the nightly DPO knobs, and `tuneloop train` starting from its best."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from store import judgments, releases, users
from store.db import make_engine, session_scope
from store.migrate import upgrade
from store.models import RunStatus, Winner
from tests.test_store import make_turn
from trainer.config import NightlyConfig
from trainer.nightly import Environment
from trainer.tune import TARGET_LAYERS, TuneConfig, apply_tuned, explicit_flags, main
from tuneloop.cli import app
from tuneloop.settings import get_settings

TOPICS = ["boil an egg", "reverse a list in python", "plant tomatoes", "write a resignation letter",
          "convert miles to km", "train a puppy to sit", "explain photosynthesis", "budget for a holiday",
          "fix a leaking tap", "learn spanish verbs", "summarise the french revolution", "speed up a sql query"]
SPACE = TuneConfig(trials=1, learning_rate=(1e-5, 1e-3), beta=(0.05, 0.5), lora_r=(2, 4),
                   target_layers=("attention", "attention+mlp"), epochs=(1, 2), progress=False)


def tiny_run(**extra) -> NightlyConfig:
    knobs = {"max_steps": 1, "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "min_pairs": 4,
             "holdout_fraction": 0.25, "max_length": 64}
    return NightlyConfig.from_flags(**{**knobs, **extra})


def store_pairs(database_url: str, topics: list[str]) -> None:
    database = make_engine(database_url)
    upgrade(database)
    with session_scope(database) as session:
        user = users.get_or_create_user(session, external_id="web:alice", name="alice")
        releases.ensure_base_release(session, base_model="tiny")
        for topic in topics:
            _, _, (short, long) = make_turn(session, user, f"How do I {topic}?",
                                            (f"Like this: {topic}.", f"Well, there are many ways to {topic}. " * 3))
            judgments.save_comparison(session, user=user, response_a=short, response_b=long, winner=Winner.a,
                                      a_position=0)
    database.dispose()


@pytest.fixture(scope="module")
def feedback_store(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('tune-store') / 'store.db'}"
    store_pairs(url, TOPICS)
    return url


def test_a_two_trial_study_writes_its_best_within_the_search_space(feedback_store, tiny_model, tmp_path):
    environment = Environment(feedback_store, tmp_path / "var", str(tiny_model), device="cpu")
    # One trial, then one more added to the same stored study (resumed): a two-trial study.
    config = replace(SPACE, trials=1, storage=f"sqlite:///{tmp_path / 'study.db'}", training=tiny_run())
    assert main(config, environment).trials == 1
    result = main(config, environment)
    assert result.status == RunStatus.succeeded, result.message
    assert result.trials == 2 and 0.0 <= result.value <= 1.0

    best = json.loads((tmp_path / "var" / "tune" / "best.json").read_text())
    params = best["params"]
    assert 1e-5 <= params["learning_rate"] <= 1e-3 and 0.05 <= params["beta"] <= 0.5
    assert params["num_train_epochs"] in (1.0, 2.0) and params["lora_r"] in (2, 4)
    assert params["lora_alpha"] == params["lora_r"] * 2  # NightlyConfig's alpha/r ratio (32/16) kept
    assert params["lora_target_modules"] in TARGET_LAYERS.values()
    assert best["study"]["trials"] == 2 and best["study"]["best_value"] == result.value
    assert best["data"]["held_out"] > 0 and best["created_at"]
    assert (tmp_path / "var" / "tune" / "history.png").read_bytes().startswith(b"\x89PNG")
    # Each trial's folder is gone: only the results stay.
    assert sorted(p.name for p in (tmp_path / "var" / "tune").iterdir()) == ["best.json", "history.png"]

    # `tuneloop train --beta 0.3`: the tuned knobs apply except the one given on the command line.
    given = NightlyConfig.from_args(["--beta", "0.3"])
    train_config, applied = apply_tuned(given, tmp_path / "var", explicit_flags(["--beta", "0.3"]))
    assert set(applied) == set(params) - {"beta"}
    assert train_config.training.beta == 0.3
    assert train_config.training.learning_rate == params["learning_rate"] and train_config.adapter.lora_r == params["lora_r"]
    assert train_config.adapter.lora_target_modules == params["lora_target_modules"]


def test_a_study_with_a_timeout_stops(feedback_store, tiny_model, tmp_path):
    environment = Environment(feedback_store, tmp_path / "var", str(tiny_model), device="cpu")
    config = TuneConfig(trials=1000, timeout=0.01, training=tiny_run(), progress=False)
    result = main(config, environment)
    # Optuna starts no trial once the timeout has passed; the first one outlasts 10 ms.
    assert result.status == RunStatus.succeeded and result.trials == 1


def test_too_little_data_stops_cleanly(tiny_model, tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store_pairs(url, TOPICS[:3])
    environment = Environment(url, tmp_path / "var", str(tiny_model), device="cpu")
    result = main(TuneConfig(trials=2, training=tiny_run(min_pairs=8), progress=False), environment)
    assert result.status == RunStatus.skipped
    assert result.message.startswith("too little data to tune on: 3 preference pairs")
    assert not (tmp_path / "var" / "tune" / "best.json").exists()


def test_explicit_flags_in_every_spelling():
    args = ["--beta", "0.3", "--lora-r=8", "--no_gradient_checkpointing", "--report_to", "tensorboard"]
    assert {"beta", "lora_r", "gradient_checkpointing", "report_to"} <= explicit_flags(args)
    assert "0.3" not in explicit_flags(args) and "learning_rate" not in explicit_flags(args)


def test_an_explicit_rank_keeps_the_tuned_alpha_out(tmp_path):
    (tmp_path / "tune").mkdir()
    tuned = {"learning_rate": 2e-4, "lora_r": 4, "lora_alpha": 8, "not_a_field": 1}
    (tmp_path / "tune" / "best.json").write_text(json.dumps({"params": tuned}))
    config, applied = apply_tuned(NightlyConfig.from_flags(lora_r=32), tmp_path, {"lora_r"})
    assert applied == ["learning_rate"]
    assert (config.adapter.lora_r, config.adapter.lora_alpha, config.training.learning_rate) == (32, 32, 2e-4)
    assert apply_tuned(NightlyConfig(), tmp_path / "nowhere", set())[1] == []


def cli(monkeypatch, tmp_path: Path, model: Path, *args: str):
    monkeypatch.setenv("TUNELOOP_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("TUNELOOP_MODEL", str(model))
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        get_settings.cache_clear()


def test_the_commands_tune_and_train_on_too_little_data(monkeypatch, tmp_path, tiny_model, caplog):
    result = cli(monkeypatch, tmp_path, tiny_model, "tune", "--trials", "2", "--search-lora-r", "4,8", "--max_steps", "1")
    assert result.exit_code == 0, result.output
    assert "skipped: too little data to tune on: 0 preference pairs" in result.output

    (tmp_path / "var" / "tune").mkdir(parents=True)
    (tmp_path / "var" / "tune" / "best.json").write_text(json.dumps({"params": {"beta": 0.25, "learning_rate": 3e-4}}))
    with caplog.at_level(logging.INFO, logger="tuneloop.trainer"):
        result = cli(monkeypatch, tmp_path, tiny_model, "train", "--learning_rate", "1e-4", "--max_steps", "1")
    assert result.exit_code == 0, result.output
    assert "from tune/best.json: beta" in caplog.text and "learning_rate" not in caplog.text.split("best.json:")[1]

    bad = cli(monkeypatch, tmp_path, tiny_model, "tune", "--search-target-layers", "everything")
    assert bad.exit_code != 0 and "target layers" in bad.output
