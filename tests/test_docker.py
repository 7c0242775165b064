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


KUBERNETES = ROOT / "docker" / "kubernetes"


def _documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]


@pytest.mark.parametrize("name", sorted(p.name for p in KUBERNETES.glob("*.yaml")))
def test_every_kubernetes_manifest_is_valid_against_the_api_schema(name):
    import kubernetes_validate

    for document in _documents(name):
        kubernetes_validate.validate(document, "1.30", strict=True)  # raises on an unknown or mistyped field


def test_tuneloop_serves_through_every_vllm_replica_on_one_shared_volume():
    by_kind = {doc["kind"]: doc for name in ("vllm.yaml", "tuneloop.yaml") for doc in _documents(name)}
    vllm, tuneloop = by_kind["StatefulSet"], by_kind["Deployment"]
    env = {e["name"]: e.get("value") for e in tuneloop["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert set(env) <= {f"TUNELOOP_{name.upper()}" for name in Settings.model_fields}
    urls = yaml.safe_load(env["TUNELOOP_VLLM_URLS"])
    assert env["TUNELOOP_ENGINE"] == "vllm"
    assert urls == [f"http://vllm-{i}.vllm:8000" for i in range(vllm["spec"]["replicas"])]  # one per replica
    args = vllm["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--enable-lora" in args and args[args.index("--served-model-name") + 1] == "base"
    claims = {doc["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
              for doc in (vllm, tuneloop)}
    mounts = {doc["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] for doc in (vllm, tuneloop)}
    assert claims == {"tuneloop-data"} and mounts == {"/data"}  # adapter paths mean the same files in both
    assert by_kind["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert vllm["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_compose_gpu_profile_runs_vllm_on_the_shared_volume():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    vllm, tuneloop = compose["services"]["vllm"], compose["services"]["tuneloop"]
    assert vllm["profiles"] == ["gpu"] and "tuneloop" not in compose["services"]["tuneloop"].get("profiles", [])
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "--enable-lora" in vllm["command"] and vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert set(vllm["volumes"]) == set(tuneloop["volumes"]) == {"tuneloop-data:/data"}
    model = vllm["command"].split("--model ", 1)[1].split()[0]
    assert model.startswith("/data/models/")  # the base model the tuneloop image put in the volume


def test_every_vllm_replica_loads_the_closing_rule_that_the_image_puts_on_the_volume():
    """Guided answers close near their cap on a GPU fleet as on the local server: the same
    processor, imported from the folder tuneloop's image fills with exactly the files it needs."""
    from serving.vllm_server import CLOSING_PROCESSOR

    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    copied = dockerfile.split("mkdir -p /data/vllm-extension/serving", 1)[1].split("\n\n", 1)[0]
    module = CLOSING_PROCESSOR.split(":")[0].replace(".", "/") + ".py"
    imports = {line.split()[1].replace(".", "/") + ".py" for line in (ROOT / module).read_text().splitlines()
               if line.startswith("from serving.")}
    for needed in ("serving/__init__.py", module, *imports):
        assert needed in copied and (ROOT / needed).is_file(), needed
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]["vllm"]
    assert f"--logits-processors {CLOSING_PROCESSOR}" in compose["command"]
    assert compose["environment"]["PYTHONPATH"] == "/data/vllm-extension"
    (replica,) = [doc for doc in _documents("vllm.yaml") if doc["kind"] == "StatefulSet"]
    container = replica["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][container["args"].index("--logits-processors") + 1] == CLOSING_PROCESSOR
    assert {"name": "PYTHONPATH", "value": "/data/vllm-extension"} in container["env"]
