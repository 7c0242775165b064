"""The images and compose file can't run here (no Docker engine); check what can be checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tuneloop.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_compose_settings_are_real_settings_and_wire_postgres():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    service = compose["services"]["tuneloop"]
    fields = {f"TUNELOOP_{name.upper()}" for name in Settings.model_fields}
    assert set(service["environment"]) <= fields
    assert service["environment"]["TUNELOOP_DATABASE_URL"].startswith("postgresql://")
    assert "postgres" in service["depends_on"] and (ROOT / service["build"]["context"].replace("..", ".")).is_dir()


def test_dockerfile_copies_every_package_and_pins_torch():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) ", dockerfile, re.MULTILINE))
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests"}
    assert packages <= copied
    assert "torch==2.13.0" in dockerfile
    env_names = set(re.findall(r"(TUNELOOP_\w+)=", dockerfile))
    assert env_names <= {f"TUNELOOP_{name.upper()}" for name in Settings.model_fields}


def test_the_nightly_cronjob_runs_tuneloop_train_one_at_a_time():
    job = yaml.safe_load((ROOT / "docker" / "kubernetes" / "nightly-cronjob.yaml").read_text())
    assert job["kind"] == "CronJob" and job["spec"]["concurrencyPolicy"] == "Forbid"
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["tuneloop", "train"]
    assert {e["name"] for e in container["env"]} <= {f"TUNELOOP_{name.upper()}" for name in Settings.model_fields}


def test_the_compose_file_starts_only_with_a_real_password_and_no_anonymous_api(monkeypatch):
    import os

    from pydantic import ValidationError

    compose = (ROOT / "docker" / "compose.yaml").read_text()
    environment = yaml.safe_load(compose)["services"]["tuneloop"]["environment"]

    def resolved(password: str) -> dict:
        # Compose's own substitution, for the two forms the file uses.
        values = {}
        for name, value in environment.items():
            value = re.sub(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", password, str(value))
            values[name] = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m[1], m[2]), value)
        return values

    def settings(values: dict) -> Settings:  # read from the environment, as in the container
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        return Settings(_env_file=None)

    assert "tuneloop:tuneloop@" not in compose  # no password written in the file
    chosen = settings(resolved("Qn4-very-random"))
    assert chosen.environment == "production" and chosen.allow_anonymous_api is False
    with pytest.raises(ValidationError, match="placeholder"):
        settings(resolved("tuneloop"))
