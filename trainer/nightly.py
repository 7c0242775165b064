"""The nightly job: feedback in, a candidate (or failed_gate) release out.

`main(config, environment)` is what `tuneloop train`, the scheduler and the tests call.
Nothing partial is ever visible: the release row appears only once its adapter, checksum
and report are written, in the state the gate decided.
"""

from __future__ import annotations

import io
import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlmodel import Session, col, select

from feedback import crud, locks
from feedback.artifacts import directory_checksum
from feedback.db import make_engine, session_scope
from feedback.migrate import upgrade
from feedback.models import Release, ReleaseState, RunStatus, TrainingRun, utcnow
from trainer import dpo, report
from trainer.config import NightlyConfig
from trainer.datasets import load_split
from trainer.evaluate import win_rate
from trainer.gate import GateThresholds, check
from trainer.judges import load_judge

log = logging.getLogger("tuneloop.trainer")


@dataclass
class Environment:
    """What the job needs from the deployment (built from tuneloop's Settings by the CLI)."""

    database_url: str
    data_dir: Path
    model_path: str  # the base model's folder or id, resolved (the embedded one converted)
    system_prompt: str = "You are a helpful, concise assistant."
    gate: GateThresholds = field(default_factory=GateThresholds)
    device: str = "auto"


@dataclass
class RunResult:
    status: RunStatus
    message: str
    run_id: int | None = None
    release: str | None = None
    state: ReleaseState | None = None
    report: dict = field(default_factory=dict)


JOB = "nightly-train"  # the lease that keeps two runs from overlapping


def main(config: NightlyConfig, environment: Environment) -> RunResult:
    database = make_engine(environment.database_url)
    upgrade(database)
    try:
        with locks.held(database, JOB):
            return _main(config, environment, database)
    except locks.LockHeld as busy:
        message = f"another training run is in progress ({busy}); this one did not start"
        log.info(message)
        return RunResult(RunStatus.skipped, message)


def _main(config: NightlyConfig, environment: Environment, database) -> RunResult:  # noqa: ANN001
    with session_scope(database) as session:
        active = crud.active_release(session)
        if active is None:
            return RunResult(RunStatus.skipped, "no active release to train on: start the service once first")
        run = TrainingRun(recipe="dpo", base_release_id=active.id, config=_config_summary(config))
        session.add(run)
        session.flush()
        since = _last_success(session)
        split = load_split(session, "dpo", config.holdout_fraction, config.near_duplicate_threshold)
    with _captured_log() as captured:
        try:
            return _run(config, environment, database, run, active, split, since, captured)
        except Exception as error:
            log.exception("training run %s failed", run.id)
            _finish(database, run.id, RunStatus.failed, {"error": str(error)}, {}, captured.getvalue())
            raise


def _run(config, environment, database, run, active, split, since, captured) -> RunResult:  # noqa: ANN001
    new_pairs = sum(1 for row in split.train + split.held_out if since is None or row.created_at > since)
    counts = {**split.counts(), "new_pairs": new_pairs}
    if new_pairs < config.min_pairs or not split.train:
        message = (f"too little new data: {new_pairs} new preference pairs"
                   f"{' since ' + since.isoformat(timespec='minutes') if since else ''}, need at least {config.min_pairs}")
        log.info(message)
        _finish(database, run.id, RunStatus.skipped, {"message": message}, counts, captured.getvalue())
        return RunResult(RunStatus.skipped, message, run.id)

    name = f"r{run.id}-{datetime.now(timezone.utc):%Y%m%d-%H%M}"
    folder = environment.data_dir / "releases" / name
    config.output_dir = str(environment.data_dir / "runs" / str(run.id))
    log.info("training %s on %d pairs (%d held out) on top of %s", name, len(split.train), len(split.held_out), active.name)
    outcome = dpo.train(config, environment.model_path, active.adapter_path, split.train, split.held_out,
                        folder / "adapter")
    checksum = directory_checksum(outcome.adapter_dir)

    evaluation = {"pair_accuracy": outcome.pair_accuracy, "win_rate": None, "eval_metrics": outcome.eval_metrics}
    if config.judge:
        prompts = _held_out_prompts(split.held_out, config.eval_prompts, environment.system_prompt)
        if prompts:
            result = win_rate(environment.model_path, str(outcome.adapter_dir), active.adapter_path, prompts,
                              load_judge(config.judge), config.judge, max_tokens=config.eval_max_tokens,
                              seed=config.seed_eval, device=environment.device)
            evaluation["win_rate"] = result.as_dict()
    rate = evaluation["win_rate"]["rate"] if evaluation["win_rate"] else None
    gate = check(environment.gate, outcome.pair_accuracy, rate)
    state = ReleaseState.candidate if gate["passed"] else ReleaseState.failed_gate
    log.info("%s", gate["summary"])

    body = {
        "release": name, "run_id": run.id, "recipe": "dpo", "base_release": active.name,
        "created_at": utcnow().isoformat(timespec="seconds"), "data": counts, "gate": gate,
        "evaluation": evaluation, "checksum": checksum,
        "training": {"history": outcome.history, "summary": _training_summary(outcome.history, config)},
    }
    report.write(body, folder)
    with session_scope(database) as session:
        release = Release(name=name, base_model=active.base_model, adapter_path=str(outcome.adapter_dir.resolve()),
                          checksum=checksum, state=state, training_run_id=run.id, report=body)
        session.add(release)
        session.flush()
        crud.audit(session, None, "release.create", f"release:{name}", {"state": state.value, "run_id": run.id})
    _finish(database, run.id, RunStatus.succeeded, {"gate": gate, **evaluation}, counts, captured.getvalue())
    shutil.rmtree(config.output_dir, ignore_errors=True)  # checkpoints are not needed once the adapter is saved
    return RunResult(RunStatus.succeeded, gate["summary"], run.id, name, state, body)


def _held_out_prompts(rows, limit: int, system_prompt: str) -> list[list[dict]]:  # noqa: ANN001
    seen: set[str] = set()
    prompts = []
    for row in rows:
        messages = row.data["prompt"]
        key = repr(messages)
        if key in seen:
            continue
        seen.add(key)
        if messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}, *messages]
        prompts.append(messages)
    return prompts[:limit]


def _last_success(session: Session) -> datetime | None:
    query = select(TrainingRun).where(TrainingRun.status == RunStatus.succeeded).order_by(col(TrainingRun.id).desc())
    run = session.exec(query).first()
    return run.started_at if run else None


def _finish(database, run_id: int, status: RunStatus, metrics: dict, counts: dict, log_text: str) -> None:  # noqa: ANN001
    with session_scope(database) as session:
        run = session.get(TrainingRun, run_id)
        run.status, run.metrics, run.data_counts = status, metrics, counts
        run.log, run.finished_at = log_text, utcnow()
        session.add(run)


def _config_summary(config: NightlyConfig) -> dict:
    keys = ("learning_rate", "beta", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
            "max_steps", "lora_r", "lora_alpha", "lora_target_modules", "min_pairs", "holdout_fraction", "judge",
            "eval_prompts", "loss_type", "seed")
    return {key: getattr(config, key) for key in keys}


def _training_summary(history: list[dict], config: NightlyConfig) -> dict:
    losses = [round(h["loss"], 4) for h in history if "loss" in h]
    return {"steps": len(losses), "first loss": losses[0] if losses else None, "last loss": losses[-1] if losses else None,
            "learning rate": config.learning_rate, "beta": config.beta, "epochs": config.num_train_epochs}


@contextmanager
def _captured_log():
    """Keep this run's log lines for its training-run row, while still printing them."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    watched = [logging.getLogger(name) for name in ("tuneloop.trainer", "transformers.trainer", "trl")]
    for logger in watched:
        logger.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        for logger in watched:
            logger.removeHandler(handler)
