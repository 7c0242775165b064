"""A local stand-in for Slack: its Web API on 127.0.0.1, correctly signed requests, and
the Socket Mode end of a websocket.

The app's Web API client is pointed at `FakeSlack.url` (`TUNELOOP_SLACK_API_URL`); every
call is recorded so tests assert what Slack would have received. Failures can be
scripted per method: an error code (`{"ok": false}`) or a rate limit (HTTP 429).
`FakeSocketMode` is where `apps.connections.open` sends the app (`FakeSlack.ws_url`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from slack_sdk.signature import SignatureVerifier
from websockets.asyncio.server import Server, ServerConnection, serve

SIGNING_SECRET = "test-signing-secret"
TEAM, BOT_USER = "T0TEST", "U0BOT"


@dataclass
class Call:
    method: str
    args: dict


@dataclass
class FakeSlack:
    calls: list[Call] = field(default_factory=list)
    ws_url: str = ""  # what apps.connections.open hands out, for Socket Mode
    _failures: dict[str, list[str]] = field(default_factory=dict)
    _ts: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/"

    def __enter__(self) -> FakeSlack:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------ scripting and asserting

    def fail(self, method: str, error: str, times: int = 1) -> None:
        """The next `times` calls of `method` fail: with `error`, or 429 for "ratelimited"."""
        self._failures.setdefault(method, []).extend([error] * times)

    def calls_to(self, method: str) -> list[dict]:
        with self._lock:
            return [c.args for c in self.calls if c.method == method]

    def wait_for(self, method: str, check: Callable[[dict], bool] = lambda args: True, timeout: float = 60) -> dict:
        """The first call of `method` whose arguments pass `check`, waiting for it to come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [args for args in self.calls_to(method) if check(args)]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"Slack never got a matching {method}; it got {[c.method for c in self.calls]}")

    # ------------------------------------------------------------ answering

    def answer(self, method: str, args: dict) -> tuple[int, dict]:
        with self._lock:
            self.calls.append(Call(method, args))
            failures = self._failures.get(method)
            error = failures.pop(0) if failures else None
        if error == "ratelimited":
            return 429, {"ok": False, "error": "ratelimited"}
        if error:
            return 200, {"ok": False, "error": error}
        return 200, {"ok": True, **self._result(method, args)}

    def _result(self, method: str, args: dict) -> dict:
        ts = f"1700000000.{next(self._ts):06d}" if method in ("chat.postMessage", "chat.postEphemeral") else ""
        results = {
            "auth.test": {"user_id": BOT_USER, "bot_id": "B0BOT", "team_id": TEAM, "team": "test", "user": "tuneloop",
                          "url": "https://test.slack.com/"},
            "chat.postMessage": {"channel": args.get("channel"), "ts": ts, "message": {"ts": ts, "text": args.get("text")}},
            "chat.update": {"channel": args.get("channel"), "ts": args.get("ts")},
            "chat.postEphemeral": {"message_ts": ts},
            "views.open": {"view": {"id": "V0TEST"}},
            "apps.connections.open": {"url": self.ws_url},
        }
        return results.get(method, {})


def _handler(slack: FakeSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            if self.headers.get("Content-Type", "").startswith("application/json"):
                args = json.loads(raw or "{}")
            else:
                args = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
                for key in ("blocks", "view"):  # form posts carry these as JSON strings
                    if isinstance(args.get(key), str):
                        args[key] = json.loads(args[key])
            method = urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[-1]
            status, body = slack.answer(method, args)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if status == 429:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

    return Handler


# ---------------------------------------------------------------- Socket Mode


class FakeSocketMode:
    """Slack's end of a Socket Mode connection: a websockets server on its own loop and thread.

    On connect it says `hello`, as Slack does; `send` delivers an envelope to the app and
    `wait_for_ack` returns what the app answered for it.
    """

    HELLO = {"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0TEST"},
             "debug_info": {"host": "fake", "build_number": 1, "approximate_connection_time": 3600}}

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.connected = threading.Event()
        self._connection: ServerConnection | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Server | None = None

    @property
    def url(self) -> str:
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/link/?ticket=test-ticket&app_id=A0TEST"

    def __enter__(self) -> FakeSocketMode:
        async def start() -> Server:  # serve() needs the loop it will run on
            return await serve(self._session, "127.0.0.1", 0)

        self._thread.start()
        self._server = self._run(start())
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        self._run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def send(self, envelope: dict, timeout: float = 30) -> None:
        assert self.connected.wait(timeout), "the app never opened a Socket Mode connection"
        self._run(self._connection.send(json.dumps(envelope)))

    def wait_for_ack(self, envelope_id: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in list(self.received) if m.get("envelope_id") == envelope_id]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no ack for envelope {envelope_id}; the app sent {self.received}")

    async def _session(self, connection: ServerConnection) -> None:
        await connection.send(json.dumps(self.HELLO))
        self._connection = connection
        self.connected.set()
        async for raw in connection:  # until the app closes the connection
            self.received.append(json.loads(raw))

    def _run(self, work):  # noqa: ANN001, ANN202 - a coroutine, run on the server's loop
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(10)


def events_envelope(body: str, envelope_id: str) -> dict:
    """An Events API delivery over Socket Mode: the same body as over HTTP, in an envelope."""
    return {"envelope_id": envelope_id, "type": "events_api", "accepts_response_payload": False,
            "payload": json.loads(body)}


# ---------------------------------------------------------------- signed requests


def signed_headers(body: str, content_type: str, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict:
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(timestamp), body=body)
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": signature}


def event_body(event: dict, event_id: str) -> str:
    return json.dumps({"type": "event_callback", "team_id": TEAM, "api_app_id": "A0TEST", "event_id": event_id,
                       "event_time": int(time.time()), "event": event,
                       "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}]})


def dm(text: str, user: str = "U0ALICE", ts: str = "1700000100.000100", thread_ts: str | None = None) -> dict:
    event = {"type": "message", "channel_type": "im", "channel": f"D{user}", "user": user, "text": text, "ts": ts}
    return {**event, "thread_ts": thread_ts} if thread_ts else event


def interaction_body(payload: dict) -> str:
    """Button presses and modal submissions come form-encoded as `payload=<json>`."""
    return urllib.parse.urlencode({"payload": json.dumps({"team": {"id": TEAM}, **payload})})


def block_action(user: str, action_id: str, value: str, channel: str, message: dict) -> str:
    return interaction_body({
        "type": "block_actions", "user": {"id": user}, "channel": {"id": channel}, "trigger_id": f"trigger-{user}",
        "container": {"type": "message", "message_ts": message["ts"], "channel_id": channel},
        "message": message, "actions": [{"action_id": action_id, "value": value, "type": "button",
                                         "block_id": "b", "action_ts": "1"}],
    })


def view_submission(user: str, view: dict, values: dict[str, dict]) -> str:
    """Submit a modal the app opened, with `values` as {block_id: {"value": element state}}."""
    submitted = {**view, "id": "V0TEST", "state": {"values": values}}
    return interaction_body({"type": "view_submission", "user": {"id": user}, "view": submitted})


def slash_command(user: str, text: str, command: str = "/tuneloop") -> str:
    return urllib.parse.urlencode({"command": command, "text": text, "user_id": user, "team_id": TEAM,
                                   "channel_id": f"D{user}", "trigger_id": f"trigger-{user}",
                                   "response_url": "http://127.0.0.1:9/response"})
