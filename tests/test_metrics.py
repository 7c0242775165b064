"""GET /metrics as Prometheus reads it (prometheus-client's own parser), after real traffic:
the official OpenAI client, a widget turn, a rating, and a nightly run in the store."""

from __future__ import annotations

from datetime import timedelta

from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from store.db import session_scope
from store.models import RunStatus, TrainingRun, utcnow


def scrape(client) -> dict[tuple[str, tuple], float]:  # noqa: ANN001
    reply = client.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(reply.text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_generation_feedback_releases_and_the_last_night(client):
    before = scrape(client)
    engine = "TransformersEngine"
    openai = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    answer = openai.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": "hello"}],
                                            max_tokens=6)
    token = client.post("/api/session").json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    conversation = client.post("/api/conversations", headers=headers).json()["id"]
    assert client.post(f"/api/conversations/{conversation}/messages", json={"content": "hi"},
                       headers=headers).status_code == 200
    turn = client.get(f"/api/conversations/{conversation}", headers=headers).json()["turns"][-1]
    assert client.post("/api/feedback/ratings", headers=headers,
                       json={"response_id": turn["answers"][0]["response_id"], "thumb": "up"}).status_code == 201
    with session_scope(client.app.state.database) as session:
        started = utcnow() - timedelta(minutes=12)
        session.add(TrainingRun(recipe="dpo", status=RunStatus.succeeded, data_counts={"train": 28},
                                started_at=started, finished_at=started + timedelta(minutes=10)))
    after = scrape(client)

    chat = {"handler": "/v1/chat/completions", "method": "POST", "status": "200"}
    assert value(after, "http_request_duration_seconds_count", **chat) == \
        value(before, "http_request_duration_seconds_count", **chat) + 1
    tokens = value(after, "tuneloop_generated_tokens_total", engine=engine) - \
        value(before, "tuneloop_generated_tokens_total", engine=engine)
    assert tokens >= answer.usage.completion_tokens  # the API's answer and the widget's
    assert value(after, "tuneloop_time_to_first_token_seconds_count", engine=engine) >= \
        value(before, "tuneloop_time_to_first_token_seconds_count", engine=engine) + 2
    assert value(after, "tuneloop_engine_batch_size_count") > value(before, "tuneloop_engine_batch_size_count")
    assert value(after, "tuneloop_release", role="active", release="base") == 1
    assert value(after, "tuneloop_feedback_stored", kind="rating", channel="web") == 1
    assert any(name == "tuneloop_guardrail_verdicts_total" for name, _ in after)  # the guardrails looked
    assert value(after, "tuneloop_nightly_last_run", status="succeeded", recipe="dpo") == 1
    assert value(after, "tuneloop_nightly_last_run_duration_seconds") == 600
    assert value(after, "tuneloop_nightly_last_run_pairs") == 28
    assert client.app.state.engine.batch_sizes.maxlen is not None  # nothing in memory grows without bound


def test_the_monitoring_profile_scrapes_tuneloop_and_every_dashboard_query_names_a_real_metric(client):
    import json
    import re
    from pathlib import Path

    import yaml

    docker = Path(__file__).resolve().parent.parent / "docker"
    compose = yaml.safe_load((docker / "compose.yaml").read_text())
    for name in ("prometheus", "grafana"):
        service = compose["services"][name]
        assert service["profiles"] == ["monitoring"]
        for volume in service["volumes"]:
            assert (docker / volume.split(":")[0]).exists(), volume  # what it mounts is in the repository
    scrape_config = yaml.safe_load((docker / "monitoring" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape_config["scrape_configs"]}
    assert jobs["tuneloop"]["static_configs"][0]["targets"] == ["tuneloop:8000"]
    assert jobs["tuneloop"]["metrics_path"] == "/metrics" and "vllm" in jobs

    with session_scope(client.app.state.database) as session:
        session.add(TrainingRun(recipe="dpo", status=RunStatus.failed, finished_at=utcnow()))
    exposed = set()  # every series Prometheus would see, observed yet or not
    for family in text_string_to_metric_families(client.get("/metrics").text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
        exposed |= {family.name + suffix for suffix in suffixes}
    dashboard = json.loads((docker / "monitoring" / "grafana" / "dashboards" / "tuneloop.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\b(?:tuneloop|http)_[a-z_]+", target["expr"])}
    assert queried and queried <= exposed, queried - exposed


def test_metrics_can_be_switched_off(settings):
    from tuneloop.app import create_app

    def paths(app) -> set[str]:  # noqa: ANN001
        return {getattr(route, "path", None) for route in app.routes}

    assert "/metrics" not in paths(create_app(settings.model_copy(update={"metrics": False})))
    assert "/metrics" in paths(create_app(settings))
