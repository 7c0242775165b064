"""Hostile input: schemathesis fuzzes the OpenAPI schema against the running app, every check on.

No 5xx, no hang (a request timeout is a failure), every status and body as the schema says
(statuses, timestamps with their zone, content types), every 4xx with a message. The run is
bounded by examples per operation and a time budget, and drives the real CLI, as a user of
schemathesis would, with an operator's token so the staff routes are reached too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from store import users
from store.db import session_scope
from store.models import Role

CONFIG = Path(__file__).parent / "fuzz" / "schemathesis.toml"  # every check on, and the two exceptions


def operator_token(database) -> str:  # noqa: ANN001
    with session_scope(database) as session:
        user = users.get_or_create_user(session, external_id="cli:fuzzer", name="fuzzer")
        user.role = Role.operator
        return users.issue_token(session, user=user)


def test_the_fuzzed_schema_finds_no_server_error_hang_or_nonconformance(live_server, tmp_path):
    token = operator_token(live_server.app.state.database)
    report = tmp_path / "report.json"
    command = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(CONFIG), "run",
               f"{live_server.url}/openapi.json", "--max-examples", "12", "--seed", "1",
               "--request-timeout", "60", "--max-time", "150", "--header", f"Authorization: Bearer {token}",
               "--report", "json", "--report-json-path", str(report), "--no-color", "--warnings", "off"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=400,
                         env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})
    summary = json.loads(report.read_text())
    assert run.returncode == 0, run.stdout[-6000:]
    assert summary["test_cases"]["generated"] > 200, summary["test_cases"]
