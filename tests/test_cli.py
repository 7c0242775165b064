"""The `tuneloop` command and the settings it reads."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from feedback import crud
from feedback.db import make_engine, session_scope
from feedback.models import Winner
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
    assert "revision 0001" in result.output
    assert (tmp_path / "var" / "tuneloop.db").is_file()


def test_export_writes_trl_rows(monkeypatch, tmp_path):
    assert cli(monkeypatch, tmp_path, "db", "upgrade").exit_code == 0
    database = make_engine(f"sqlite:///{tmp_path / 'var' / 'tuneloop.db'}")
    with session_scope(database) as session:
        user = crud.get_or_create_user(session, "web:x", "x")
        _, _, (a, b) = make_turn(session, user, "Pick one", ("good", "bad"))
        crud.save_comparison(session, user, a, b, winner=Winner.a, a_position=0)
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
        crud.ensure_base_release(session, str(tiny_model))
    result = cli(monkeypatch, tmp_path, "train", "--min_pairs", "3")
    assert result.exit_code == 0, result.output
    assert "skipped: too little new data: 0 new preference pairs, need at least 3" in result.output


def test_users_and_releases_from_the_shell(monkeypatch, tmp_path):
    token = cli(monkeypatch, tmp_path, "users", "add", "olga", "--role", "operator").output.strip()
    assert token.startswith("tl-")
    database = make_engine(f"sqlite:///{tmp_path / 'var' / 'tuneloop.db'}")
    with session_scope(database) as session:
        assert crud.user_by_token(session, token).role.value == "operator"
        crud.ensure_base_release(session, "tiny")
    listed = cli(monkeypatch, tmp_path, "releases", "list")
    assert "base" in listed.output and "active" in listed.output
    refused = cli(monkeypatch, tmp_path, "releases", "approve", "base")
    assert refused.exit_code == 1 and "is active; this needs it candidate" in refused.output
    bad_role = cli(monkeypatch, tmp_path, "users", "add", "x", "--role", "king")
    assert bad_role.exit_code != 0 and "role must be" in bad_role.output
