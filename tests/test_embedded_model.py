"""The real embedded model: SmolLM2-135M-Instruct from the packaged GGUF, served end to end."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from serving.weights import EMBEDDED_FOLDER, embedded_gguf, resolve_model
from tests.models import CACHE, embedded_model_dir
from tuneloop.app import create_app
from tuneloop.settings import EMBEDDED_MODEL, Settings


def test_the_gguf_ships_in_the_package_and_converts_to_safetensors():
    assert embedded_gguf().name.endswith(".gguf")
    folder = embedded_model_dir()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 30
    # Once converted, the default resolves to the folder without converting again.
    assert resolve_model(EMBEDDED_MODEL, CACHE / "models", EMBEDDED_MODEL) == str(CACHE / "models" / EMBEDDED_FOLDER)


def test_default_settings_serve_the_embedded_model(tmp_path):
    embedded_model_dir()
    settings = Settings(_env_file=None, data_dir=CACHE, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert settings.model == EMBEDDED_MODEL
    with TestClient(create_app(settings)) as client:
        reply = client.post("/v1/chat/completions", json={
            "model": "tuneloop", "temperature": 0, "max_tokens": 20,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        })
    assert reply.status_code == 200
    assert "Paris" in reply.json()["choices"][0]["message"]["content"]
