"""The `tuneloop` command and the settings it reads."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from store import judgments, releases, users
from store.db import make_engine, session_scope
from store.models import Winner
from tests.test_store import make_turn
from tuneloop.cli import app
from tuneloop.settings import Settings, get_settings


def cli(monkeypatch, tmp_path, *args: str):
    monkeypatch.setenv("TUNELOOP_DATA_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        get_settings.cache_clear()


def test_db_upgrade_creates_the_default_sqlite_store(monkeypatch, tmp_path):
    result = cli(monkeypatch, tmp_path, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert "revision 0008" in result.output
    assert (tmp_path / "var" / "tuneloop.db").is_file()


def test_export_writes_trl_rows(monkeypatch, tmp_path):
    assert cli(monkeypatch, tmp_path, "db", "upgrade").exit_code == 0
    database = make_engine(f"sqlite:///{tmp_path / 'var' / 'tuneloop.db'}")
    with session_scope(database) as session:
        user = users.get_or_create_user(session, external_id="web:x", name="x")
        _, _, (a, b) = make_turn(session, user, "Pick one", ("good", "bad"))
        judgments.save_comparison(session, user=user, response_a=a, response_b=b, winner=Winner.a, a_position=0)
    out = tmp_path / "pairs.jsonl"
    result = cli(monkeypatch, tmp_path, "export", "--format", "dpo", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "wrote 1 dpo rows" in result.output
    row = json.loads(out.read_text())
    assert row["chosen"] == [{"role": "assistant", "content": "good"}]
    bad = cli(monkeypatch, tmp_path, "export", "--format", "ppo", "--out", str(out))
    assert bad.exit_code != 0 and "ppo" in bad.output


def test_cli_starts_without_importing_torch():
    # The CLI must stay quick to start: heavy imports belong inside the commands.
    code = "import sys, tuneloop.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_settings_read_prefixed_environment_and_dotenv(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("TUNELOOP_AB_SHARE=0.5\nTUNELOOP_PORT=9001\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNELOOP_MODEL", "HuggingFaceTB/SmolLM2-360M-Instruct")
    settings = Settings()
    assert (settings.ab_share, settings.port) == (0.5, 9001)
    assert settings.model == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert settings.database_url == "sqlite:///var/tuneloop.db"


def test_train_help_lists_tuneloop_and_trl_knobs(monkeypatch, tmp_path):
    result = cli(monkeypatch, tmp_path, "train", "--help")
    assert "--min_pairs" in result.output and "--beta" in result.output and "--judge" in result.output


def test_train_with_too_little_data_says_so_and_exits_cleanly(monkeypatch, tmp_path, tiny_model):
    monkeypatch.setenv("TUNELOOP_MODEL", str(tiny_model))
    assert cli(monkeypatch, tmp_path, "db", "upgrade").exit_code == 0
    with session_scope(make_engine(f"sqlite:///{tmp_path / 'var' / 'tuneloop.db'}")) as session:
        releases.ensure_base_release(session, base_model=str(tiny_model))
    result = cli(monkeypatch, tmp_path, "train", "--min_pairs", "3")
    assert result.exit_code == 0, result.output
    assert "skipped: too little new data: 0 new pairs" in result.output and "need at least 3 new preference pairs" in result.output


def test_users_and_releases_from_the_shell(monkeypatch, tmp_path):
    token = cli(monkeypatch, tmp_path, "users", "add", "olga", "--role", "operator").output.strip()
    assert token.startswith("tl-")
    database = make_engine(f"sqlite:///{tmp_path / 'var' / 'tuneloop.db'}")
    with session_scope(database) as session:
        assert users.user_by_token(session, token=token).role.value == "operator"
        releases.ensure_base_release(session, base_model="tiny")
    listed = cli(monkeypatch, tmp_path, "releases", "list")
    assert "base" in listed.output and "active" in listed.output
    refused = cli(monkeypatch, tmp_path, "releases", "approve", "base")
    assert refused.exit_code == 1 and "is active; this needs it candidate" in refused.output
    bad_role = cli(monkeypatch, tmp_path, "users", "add", "x", "--role", "king")
    assert bad_role.exit_code != 0 and "role must be" in bad_role.output


def test_slack_without_socket_points_at_serve(monkeypatch, tmp_path):
    result = cli(monkeypatch, tmp_path, "slack")
    assert result.exit_code != 0
    assert "tuneloop serve" in result.output and "/slack/events" in result.output


def socket_mode_env(monkeypatch, bot_token: str | None, app_token: str | None) -> None:
    # `tuneloop slack --socket` sets TUNELOOP_SLACK_SOCKET_MODE for its child processes; setting
    # it here first makes monkeypatch put the environment back afterwards.
    monkeypatch.setenv("TUNELOOP_SLACK_SOCKET_MODE", "false")
    for name, value in (("TUNELOOP_SLACK_BOT_TOKEN", bot_token), ("TUNELOOP_SLACK_APP_TOKEN", app_token)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def test_slack_socket_needs_both_tokens(monkeypatch, tmp_path):
    socket_mode_env(monkeypatch, None, None)
    neither = cli(monkeypatch, tmp_path, "slack", "--socket")
    assert neither.exit_code == 2
    assert "TUNELOOP_SLACK_BOT_TOKEN" in neither.output and "TUNELOOP_SLACK_APP_TOKEN" in neither.output
    socket_mode_env(monkeypatch, "xoxb-test", None)
    no_app_token = cli(monkeypatch, tmp_path, "slack", "--socket")
    assert no_app_token.exit_code == 2 and "TUNELOOP_SLACK_APP_TOKEN is not" in no_app_token.output
    socket_mode_env(monkeypatch, None, "xapp-test")
    no_bot_token = cli(monkeypatch, tmp_path, "slack", "--socket")
    assert no_bot_token.exit_code == 2 and "TUNELOOP_SLACK_BOT_TOKEN" in no_bot_token.output
    assert "TUNELOOP_SLACK_APP_TOKEN" not in no_bot_token.output


def test_slack_socket_runs_the_serve_service_in_socket_mode(monkeypatch, tmp_path):
    import os

    import uvicorn

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **options: served.update(app=app, port=port))
    socket_mode_env(monkeypatch, "xoxb-test", "xapp-test")  # and no signing secret: none is needed
    result = cli(monkeypatch, tmp_path, "slack", "--socket", "--port", "8123")
    assert result.exit_code == 0, result.output
    assert served["port"] == 8123 and served["app"].state.settings.slack_socket_mode
    assert served["app"].state.slack is not None  # the bolt app, connected when the service starts
    assert os.environ["TUNELOOP_SLACK_SOCKET_MODE"] == "true"  # the nightly `tuneloop train` reads it too


def test_users_add_slack_gives_a_slack_user_a_role(monkeypatch, tmp_path):
    from sqlmodel import select

    from store.models import AuditLog, User

    result = cli(monkeypatch, tmp_path, "users", "add", "rita", "--role", "reviewer", "--slack", "U0RITA")
    assert result.exit_code == 0, result.output
    assert "rita (Slack U0RITA): reviewer" in result.output and "tl-" not in result.output  # no token
    assert cli(monkeypatch, tmp_path, "users", "add", "rita", "--role", "operator", "--slack", "U0RITA").exit_code == 0
    local = cli(monkeypatch, tmp_path, "users", "add", "rita", "--role", "user")
    assert local.output.strip().startswith("tl-")  # a local user is still a separate person with a token
    database = make_engine(f"sqlite:///{tmp_path / 'var' / 'tuneloop.db'}")
    with session_scope(database) as session:
        users = {u.external_id: u for u in session.exec(select(User)).all()}
        assert (users["slack:U0RITA"].name, users["slack:U0RITA"].role.value) == ("rita", "operator")
        assert users["local:rita"].role.value == "user"
        assert session.exec(select(AuditLog).where(AuditLog.target == "slack:U0RITA")).all()
    bad = cli(monkeypatch, tmp_path, "users", "add", "x", "--slack", "@rita")
    assert bad.exit_code != 0 and "Slack user id" in bad.output


def test_a_release_exports_with_its_model_card_and_loads_with_plain_peft(monkeypatch, tmp_path, tiny_model):
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from store.artifacts import directory_checksum
    from store.models import Release, ReleaseState
    from tests.adapters import make_adapter
    from trainer import model_card

    adapter = make_adapter(tiny_model, tmp_path / "releases" / "r7" / "adapter")
    body = {"release": "r7", "run_id": 7, "recipe": "dpo", "recipe_reason": "pairs", "base_release": "base",
            "data": {"pairs_train": 28, "pairs_held_out": 8}, "gate": {"summary": "Gate passed"},
            "evaluation": {"win_rate": {"rate": 0.61, "low": 0.52, "high": 0.7, "n": 64}}}
    model_card.write(adapter, body, str(tiny_model), str(tiny_model))
    assert cli(monkeypatch, tmp_path, "db", "upgrade").exit_code == 0
    with session_scope(make_engine(f"sqlite:///{tmp_path / 'var' / 'tuneloop.db'}")) as session:
        releases.ensure_base_release(session, base_model=str(tiny_model))
        session.add(Release(name="r7", base_model=str(tiny_model), adapter_path=str(adapter),
                            checksum=directory_checksum(adapter), state=ReleaseState.candidate, report=body))
    out = tmp_path / "exported"
    done = cli(monkeypatch, tmp_path, "releases", "export", "r7", str(out))
    assert done.exit_code == 0, done.output
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == str(tiny_model) and meta["library_name"] == "peft" and meta["license"] == "unknown"
    assert "| pairs_train | 28 |" in card and "0.610" in card
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(out))  # plain PEFT
    assert model.peft_config["default"].r == 8
    again = cli(monkeypatch, tmp_path, "releases", "export", "r7", str(out))
    assert again.exit_code == 1 and "not empty" in again.output


def test_the_base_models_license_comes_from_its_card(tmp_path):
    from trainer.model_card import base_license

    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# a model\n")
    assert base_license(str(tmp_path)) == "mit"
    assert base_license("/data/models/smollm2-135m-instruct") == "apache-2.0"  # the embedded model's own card


def test_the_card_names_the_embedded_model_as_the_hub_does(tmp_path, tiny_model):
    from tests.adapters import make_adapter
    from trainer import model_card

    adapter = make_adapter(tiny_model, tmp_path / "adapter")
    body = {"release": "r1", "run_id": 1, "recipe": "dpo", "base_release": "base", "data": {}}
    card = model_card.write(adapter, body, "embedded:smollm2-135m-instruct", "/var/models/smollm2-135m-instruct")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card.read_text()
    assert "license: apache-2.0" in card.read_text()


def test_export_writes_a_hugging_face_datasets_folder_with_a_card(monkeypatch, tmp_path):
    from datasets import load_dataset

    from tests.feedback_seed import seed

    assert cli(monkeypatch, tmp_path, "db", "upgrade").exit_code == 0
    database = make_engine(f"sqlite:///{tmp_path / 'var' / 'tuneloop.db'}")
    seed(database, pairs=4, thumbs=3, corrections=2)
    out = tmp_path / "dataset"
    result = cli(monkeypatch, tmp_path, "export", "--hf-dataset", str(out))
    assert result.exit_code == 0, result.output
    pairs = load_dataset(str(out), "dpo", split="train")  # as people who train elsewhere read it
    assert len(pairs) >= 4 and {"prompt", "chosen", "rejected", "source"} <= set(pairs.column_names)
    assert "comparison" in set(pairs["source"])
    assert len(load_dataset(str(out), "kto", split="train")) >= 3
    card = (out / "README.md").read_text()
    assert "config_name: dpo" in card and f"| dpo | preference (prompt, chosen, rejected) | {len(pairs)} |" in card
    neither = cli(monkeypatch, tmp_path, "export")
    assert neither.exit_code != 0 and "--hf-dataset" in neither.output
