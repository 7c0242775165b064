"""Shared by bench/swap.py and bench/loop.py: the model to serve and the real service under uvicorn.

The service runs in a subprocess (its own GIL, as `tuneloop serve` runs in production),
configured only through TUNELOOP_* variables, with its log in a file beside its data.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def model_path(choice: str | None) -> str:
    """'tiny' (the tests' random twin), a local folder, or None: the embedded SmolLM2-135M."""
    if choice == "tiny":
        from tests.models import tiny_model_dir

        return str(tiny_model_dir())
    if choice:
        return choice
    from serving.weights import resolve_model
    from tuneloop.settings import EMBEDDED_MODEL

    return resolve_model(EMBEDDED_MODEL, ROOT / "var" / "models", EMBEDDED_MODEL)  # converted once, kept in var/


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def service(data_dir: Path, model: str, settings: dict[str, str] | None = None, threads: int = 0) -> Iterator[str]:
    """`tuneloop.app:create_app` under uvicorn on a free port; yields its base URL.

    `settings` are extra TUNELOOP_* variables (without the prefix), such as {"AB_SHARE": "1.0"}.
    `threads` > 0 caps torch's threads in the service (OMP_NUM_THREADS): on a machine shared
    with other work, spinning OpenMP threads can slow generation many times over.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TUNELOOP_MODEL": model,
           "TUNELOOP_DEVICE": "cpu", "TUNELOOP_DATA_DIR": str(data_dir), "TUNELOOP_PORT": str(port)}
    env.pop("TUNELOOP_DATABASE_URL", None)  # a SQLite file in data_dir, whatever the caller's shell says
    env.setdefault("TUNELOOP_ENGINE", "transformers")  # what a bench measures is named, never picked for it
    env.update({f"TUNELOOP_{key}": str(value) for key, value in (settings or {}).items()})
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "uvicorn", "tuneloop.app:create_app", "--factory", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "info", "--no-access-log"]
    log_path = data_dir / "service.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=data_dir, env=env, stdout=log, stderr=subprocess.STDOUT)  # no stray .env
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, log_path)
        yield base
    finally:
        process.send_signal(signal.SIGINT)  # graceful: the lifespan closes the engine and the pool
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_healthy(base: str, process: subprocess.Popen, log_path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}; its log:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"the service did not become healthy in {timeout:g} s; its log:\n{tail(log_path)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
