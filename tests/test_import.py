"""`tuneloop import`: Open WebUI, Langfuse and TRL feedback, through the command, on both databases.

Each import is checked where it lands: the datasets the nightly run reads (feedback/export.py).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from feedback.export import kto_rows, preference_rows, sft_rows
from store.models import Channel, Comparison, Conversation, Rating, Response, Thumb
from tuneloop.cli import app
from tuneloop.settings import get_settings

EMAIL = "ana.lima@mailbox.org"  # example.com is a documentation domain, kept as it is


def tuneloop_import(monkeypatch, tmp_path, database_url: str, *args: str):
    monkeypatch.setenv("TUNELOOP_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, ["import", *args])
    finally:
        get_settings.cache_clear()


def openwebui_record(feedback_id: str, rating: int, *, arena: bool = False) -> dict:
    """A record as Open WebUI exports it: the chat's message tree in its snapshot."""
    messages = {
        "u1": {"id": "u1", "parentId": None, "childrenIds": ["a1"], "role": "user", "content": "Hi"},
        "a1": {"id": "a1", "parentId": "u1", "childrenIds": ["u2"], "role": "assistant", "content": "Hello!"},
        "u2": {"id": "u2", "parentId": "a1", "childrenIds": ["a2", "a3"], "role": "user",
               "content": f"Write to {EMAIL} about the invoice"},
        "a2": {"id": "a2", "parentId": "u2", "childrenIds": [], "role": "assistant", "model": "llama3",
               "content": "Dear Ana, the invoice is attached."},
        "a3": {"id": "a3", "parentId": "u2", "childrenIds": [], "role": "assistant", "model": "qwen",
               "content": "invoice."},
    }
    return {
        "id": feedback_id, "user_id": "owui-user-1", "version": 0, "type": "rating",
        "data": {"rating": rating, "model_id": "llama3", "sibling_model_ids": ["qwen"] if arena else None,
                 "reason": "helpful", "comment": "clear", "tags": [], "details": {"rating": 9}},
        "meta": {"model_id": "llama3", "message_id": "a2", "message_index": 3, "chat_id": "c1"},
        "snapshot": {"chat": {"id": "c1", "user_id": "owui-user-1", "title": "Invoice",
                              "chat": {"history": {"messages": messages, "currentId": "a2"}}}},
        "created_at": 1764000000, "updated_at": 1764000000,
    }


def test_open_webui_export_becomes_ratings_and_arena_pairs(monkeypatch, tmp_path, database_url):
    export = tmp_path / "feedback-export.json"
    export.write_text(json.dumps([openwebui_record("f1", 1), openwebui_record("f2", 1, arena=True),
                                  {"id": "f3", "type": "rating", "data": {"rating": 1}, "meta": {}}]))
    result = tuneloop_import(monkeypatch, tmp_path, database_url, str(export))
    assert result.exit_code == 0, result.output
    assert "stored 3" in result.output and "1 comparisons" in result.output
    again = tuneloop_import(monkeypatch, tmp_path, database_url, str(export), "--from", "openwebui")
    assert "stored 0" in again.output and "3 already imported" in again.output  # deduplicated
    from store.db import make_engine

    with Session(make_engine(database_url)) as session:
        conversations = session.exec(select(Conversation)).all()
        assert {c.channel for c in conversations} == {Channel.imported}
        texts = [r.text for r in session.exec(select(Response))]
        thumbs = session.exec(select(Rating)).all()
        comparison = session.exec(select(Comparison)).one()
        pairs = preference_rows(session)
        prompts = {json.dumps(row.data["prompt"]) for row in kto_rows(session)}
    assert {t.thumb for t in thumbs} == {Thumb.up} and {t.stars for t in thumbs} == {5}  # 9 of 10 is five stars
    assert comparison.kind == "imported"
    (pair,) = [row for row in pairs if row.source == "comparison"]
    assert pair.data["chosen"][0]["content"] == "Dear Ana, the invoice is attached."
    assert pair.data["rejected"][0]["content"] == "invoice."
    # The prompt is the rated message's ancestors, redacted like a chat turn's.
    (prompt,) = prompts
    assert json.loads(prompt)[:2] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert EMAIL not in prompt and all(EMAIL not in text for text in texts)


def test_trl_files_of_each_kind_land_in_the_datasets_they_train(monkeypatch, tmp_path, database_url):
    rows = [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
         "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]},
        {"prompt": [{"role": "user", "content": "Say hi"}], "completion": [{"role": "assistant", "content": "Hi!"}],
         "label": False},
        {"messages": [{"role": "user", "content": "Define DNA"}, {"role": "assistant", "content": "A molecule."}]},
    ]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in [*rows, rows[0]]) + "\n")  # one row twice
    result = tuneloop_import(monkeypatch, tmp_path, database_url, str(data))
    assert result.exit_code == 0, result.output
    assert "read 5: stored 4" in result.output and "1 already imported" in result.output
    from store.db import make_engine

    with Session(make_engine(database_url)) as session:
        pairs = {(r.data["chosen"][0]["content"], r.data["rejected"][0]["content"]) for r in preference_rows(session)}
        kto = [(r.data["completion"][0]["content"], r.data["label"]) for r in kto_rows(session)]
        sft = [r.data["messages"][-1]["content"] for r in sft_rows(session)]
    assert pairs == {("Paris.", "Lyon."), ("4", "5")}  # the SFT row pairs nothing with itself
    assert ("Hi!", False) in kto
    assert sft == ["A molecule."]


def test_a_file_that_is_not_an_export_is_refused_with_what_to_fix(monkeypatch, tmp_path, database_url):
    broken = tmp_path / "rows.jsonl"
    broken.write_text('{"prompt": "x", "chosen": "y"}\n')
    result = tuneloop_import(monkeypatch, tmp_path, database_url, str(broken))
    assert result.exit_code != 0 and "line 1" in result.output and "not a TRL row" in result.output
    unknown = tmp_path / "thing.json"
    unknown.write_text('{"rows": []}')
    result = tuneloop_import(monkeypatch, tmp_path, database_url, str(unknown))
    assert result.exit_code != 0 and "--from" in result.output


class _LangfuseAPI(BaseHTTPRequestHandler):
    """Langfuse's public API as documented (the server itself needs ClickHouse and Docker, which
    this machine cannot run): scores in pages, and each trace by id, behind basic auth."""

    scores = [
        {"id": "s1", "traceId": "t1", "name": "user-feedback", "dataType": "BOOLEAN", "value": 0,
         "comment": "wrong city", "timestamp": "2026-11-30T10:00:00Z"},
        {"id": "s2", "traceId": "t2", "name": "stars", "dataType": "NUMERIC", "value": 4},
        {"id": "s3", "traceId": "t2", "name": "quality", "dataType": "CATEGORICAL", "stringValue": "meh"},
    ]
    traces = {
        "t1": {"id": "t1", "userId": "lf-7", "input": [{"role": "user", "content": "Capital of Peru?"}],
               "output": {"role": "assistant", "content": "Bogotá."}},
        "t2": {"id": "t2", "input": {"messages": [{"role": "user", "content": "Tell a joke"}]}, "output": "Knock knock."},
    }

    def do_GET(self):  # noqa: N802
        if self.headers.get("Authorization") != "Basic cGstbGYtMTpzay1sZi0x":  # pk-lf-1:sk-lf-1
            return self._send(401, {"message": "unauthorized"})
        path, _, query = self.path.partition("?")
        if path == "/api/public/v2/scores":
            page = int(dict(p.split("=") for p in query.split("&"))["page"])
            return self._send(200, {"data": self.scores[(page - 1) * 2:page * 2],  # two a page
                                    "meta": {"page": page, "totalPages": 2}})
        trace = self.traces.get(path.removeprefix("/api/public/traces/"))
        return self._send(200, trace) if trace else self._send(404, {"message": "not found"})

    def _send(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # noqa: ANN002
        pass


@pytest.fixture
def langfuse_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LangfuseAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_langfuse_scores_from_its_api_become_thumbs_and_stars(monkeypatch, tmp_path, database_url, langfuse_host):
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-1")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-1")
    result = tuneloop_import(monkeypatch, tmp_path, database_url, "--from", "langfuse", "--langfuse-host", langfuse_host)
    assert result.exit_code == 0, result.output
    assert "read 2: stored 2" in result.output  # the categorical "meh" says neither up nor down
    from store.db import make_engine

    with Session(make_engine(database_url)) as session:
        ratings = {session.get(Response, r.response_id).text: r for r in session.exec(select(Rating))}
        traces = {r.text: r.trace for r in session.exec(select(Response))}
    assert ratings["Bogotá."].thumb == Thumb.down and ratings["Bogotá."].comment == "wrong city"
    assert ratings["Knock knock."].stars == 4
    assert traces["Bogotá."]["source"] == "langfuse" and traces["Bogotá."]["external_id"] == "s1"
