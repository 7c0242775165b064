"""The nightly job: feedback in, a candidate (or failed_gate) release out.

`main(config, environment)` is what `tuneloop train`, the scheduler and the tests call:

1. take the run lease (two runs never overlap), then open a run or, with `--resume`, reopen
   the newest interrupted one;
2. prepare the data (`trainer.data`: every feedback kind, curated, split, saved with the run);
3. train a reward model when the recipe needs one or the pairs allow it (`trainer.reward_model`);
4. pick the recipe (`trainer.recipes`) and train its stages, each resumable from checkpoints;
5. evaluate the candidate against the active release, gate it, write the report;
6. only then create the release row, in the state the gate decided.

Nothing partial is ever visible: the release row appears only once its adapter, checksum,
reward model and report are all written.
"""

from __future__ import annotations

import io
import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from store import audit, releases
from store import locks
from store.artifacts import REWARD_FOLDER, directory_checksum
from store.db import make_engine, session_scope
from store.migrate import upgrade
from store.models import Release, ReleaseState, RunStatus, TrainingRun, utcnow
from trainer import adoption, distributed, model_card, report
from trainer.assessment import assess, deciding_evidence, torch_device
from trainer.config import NightlyConfig, derive
from trainer.curation import CurationBlocked, golden_set
from trainer.data import TrainingData, prepare
from trainer.gate import GateThresholds, check
from trainer.policy import StageOutcome
from trainer.recipes import Choice, choose, chosen_styles, wants_reward_model
from trainer.reward_model import METRICS_FILE, RewardConfig, RewardModel, train_reward_model
from trainer.styles import release_instruction

log = logging.getLogger("tuneloop.trainer")


@dataclass
class Environment:
    """What the job needs from the deployment (built from tuneloop's Settings by the CLI)."""

    database_url: str
    data_dir: Path
    model_path: str  # the base model's folder or id, resolved (the embedded one converted)
    system_prompt: str = "You are a helpful, concise assistant."
    max_tokens: int = 256  # the answer cap serving uses: evaluation answers are capped as served
    gate: GateThresholds = field(default_factory=GateThresholds)
    device: str = "auto"
    output_check: Any = None  # the plugins' output check: scrubs training data, counts violations
    reward_functions: list = field(default_factory=list)  # the plugins' reward functions (GRPO, PPO)
    answer_engine: Any = None  # makes the engine evaluation answers through (trainer.answers); None: in-process

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)


@dataclass
class RunResult:
    status: RunStatus
    message: str
    run_id: int | None = None
    release: str | None = None
    state: ReleaseState | None = None
    report: dict = field(default_factory=dict)


@dataclass
class _Run:
    """One run's row, folder and starting point (plain values: it is sent to the other processes)."""

    id: int
    folder: Path
    since: datetime | None
    active_name: str
    active_adapter: str | None
    base_model: str
    resumed: bool = False
    active_instruction: str | None = None

    @classmethod
    def of(cls, run_id: int, folder: Path, since: datetime | None, active: Release, resumed: bool = False) -> _Run:
        return cls(run_id, folder, since, active.name, active.adapter_path, active.base_model, resumed,
                   active.instruction)


JOB = "nightly-train"  # the lease that keeps two runs from overlapping


def main(config: NightlyConfig, environment: Environment) -> RunResult:
    """Run the job. Under `accelerate launch` (or torchrun) every process calls this: the main
    one takes the lease, prepares the data, evaluates and releases; all of them train."""
    processes = distributed.processes()
    if not processes.is_main_process:
        return _follow(config, environment, processes)
    database = make_engine(environment.database_url)
    upgrade(database)
    try:
        with locks.held(database, JOB) as lease, distributed.leading(processes) as lead:
            return _main(config, environment, database, lead, lease)
    except locks.LockHeld as busy:
        message = f"another training run is in progress ({busy}); this one did not start"
        log.info(message)
        return RunResult(RunStatus.skipped, message)


def _main(config: NightlyConfig, environment: Environment, database, lead, lease) -> RunResult:  # noqa: ANN001
    with _captured_log() as captured:
        with session_scope(database) as session:
            active = releases.active_release(session)
            if active is None:
                return RunResult(RunStatus.skipped, "no active release to train on: start the service once first")
            run = _open_run(session, config, environment, active)
        try:
            return _run(config, environment, database, run, captured, lead, lease)
        except CurationBlocked as blocked:
            log.warning("%s", blocked)
            _finish(database, run.id, RunStatus.skipped, {"message": str(blocked)}, {}, captured.getvalue())
            return RunResult(RunStatus.skipped, str(blocked), run.id)
        except Exception as error:
            log.exception("training run %s failed", run.id)
            _finish(database, run.id, RunStatus.failed, {"error": str(error)}, {}, captured.getvalue())
            raise


def _follow(config: NightlyConfig, environment: Environment, processes) -> RunResult:  # noqa: ANN001
    """Another process's part under a distributed launch: train what the main process prepared."""
    run = distributed.receive(processes)
    if run is None:
        return RunResult(RunStatus.skipped, "the main process started no run")
    config = config.replace(resume=run.resumed)
    data = TrainingData.load(run.folder)
    first = choose(config, data)
    if wants_reward_model(first.recipe, config, data):
        _reward_stage(config, environment, data, run.folder / "reward")
    choice = distributed.receive(processes)
    _train_recipe(choice, config, environment, data, run)
    where = f"process {processes.process_index} of {processes.num_processes}"
    return RunResult(RunStatus.succeeded, f"{where}: trained; the main process evaluates and releases", run.id)


def _open_run(session: Session, config: NightlyConfig, environment: Environment, active: Release) -> _Run:
    """Reopen the newest interrupted run for `--resume`, else start one. We hold the lease, so
    any other run still marked running was interrupted: it is marked failed unless resumed."""
    runs = environment.data_dir / "runs"
    interrupted = session.exec(select(TrainingRun).where(TrainingRun.status == RunStatus.running)
                               .order_by(col(TrainingRun.id).desc())).all()
    resumable = next((r for r in interrupted if config.pipeline.resume and (runs / str(r.id) / "data.json").is_file()), None)
    for stale in interrupted:
        if stale is not resumable:
            stale.status, stale.finished_at = RunStatus.failed, utcnow()
            stale.metrics = {**stale.metrics, "error": "interrupted (the process stopped without finishing)"}
            session.add(stale)
    if resumable is not None:
        log.info("resuming training run %s from its last checkpoint", resumable.id)
        base = session.get(Release, resumable.base_release_id) or active
        return _Run.of(resumable.id, runs / str(resumable.id), None, base, resumed=True)
    if config.pipeline.resume:
        log.info("nothing to resume (no interrupted run with saved data): starting a new run")
    run = TrainingRun(recipe=config.pipeline.recipe, base_release_id=active.id, config=_config_summary(config))
    session.add(run)
    session.flush()
    return _Run.of(run.id, runs / str(run.id), _learned_until(session, active), active)


def _run(config: NightlyConfig, environment: Environment, database, run: _Run, captured, lead,  # noqa: ANN001
         lease) -> RunResult:  # noqa: ANN001
    config = config.replace(resume=run.resumed)  # stages continue from checkpoints only within a reopened run
    data = _data(config, environment, database, run)
    counts = data.counts()
    first = choose(config, data)
    lead.send(run if first.recipe else None)
    if first.recipe is None:
        log.info(first.reason)
        _finish(database, run.id, RunStatus.skipped, {"message": first.reason}, counts, captured.getvalue())
        shutil.rmtree(run.folder, ignore_errors=True)
        return RunResult(RunStatus.skipped, first.reason, run.id)

    reward = None
    if wants_reward_model(first.recipe, config, data):
        reward = _reward_stage(config, environment, data, run.folder / "reward")
        lease.check()  # a run whose lease was lost stops here rather than overlap the next one
    choice = choose(config, data, reward["pair_accuracy"] if reward else None) if config.pipeline.recipe == "auto" else first
    distilled = _distill_stage(config, environment, data, run) if choice.recipe == "distill" else None
    lead.send(choice)
    log.info("recipe %s: %s", choice.recipe, choice.reason)
    _set_recipe(database, run.id, choice.recipe)
    stages = _train_recipe(choice, config, environment, data, run)
    lease.check()

    name = f"r{run.id}-{datetime.now(timezone.utc):%Y%m%d-%H%M}"
    folder = environment.data_dir / "releases" / name
    adapter_dir = _copy(stages[-1].adapter_dir, folder / "adapter")
    if reward:
        _copy(run.folder / "reward", folder / REWARD_FOLDER)  # where store.artifacts.reward_dir_for looks
    instruction = _instruction(config, environment, data, run)
    evaluation, metrics = assess(config, environment, data, run.active_adapter, adapter_dir, folder, reward, choice,
                                 (instruction["text"], run.active_instruction))
    thresholds, decided_by = deciding_evidence(environment.gate, choice, evaluation)
    gate = {**check(thresholds, metrics), "decided_by": decided_by}
    state = ReleaseState.candidate if gate["passed"] else ReleaseState.failed_gate
    log.info("%s", gate["summary"])

    body = {
        "release": name, "run_id": run.id, "recipe": choice.recipe, "recipe_reason": choice.reason,
        "base_release": run.active_name, "created_at": utcnow().isoformat(timespec="seconds"),
        "data": {**counts, **{f"replay_{k}": v["replayed"] for k, v in data.replay.items()},
                 "choices": data.choices},
        "curation": data.curation, "gate": gate, "evaluation": evaluation,
        "reward_model": reward, "distilled": distilled, "styles": data.styles, "instruction": instruction,
        "training": {"stages": {s.name: {"history": s.history, "summary": _summary(s, config)} for s in stages}},
    }
    model_card.write(adapter_dir, body, run.base_model, environment.model_path)
    body["checksum"] = checksum = directory_checksum(adapter_dir)  # of the adapter with its card
    report.write(body, folder)
    lease.check()  # never a release from a run that no longer holds the job
    with session_scope(database) as session:
        release = Release(name=name, base_model=run.base_model, adapter_path=str(adapter_dir.resolve()),
                          checksum=checksum, instruction=instruction["text"], state=state, training_run_id=run.id,
                          report=body)
        session.add(release)
        session.flush()
        audit.record(session, actor=None, action="release.create", target=f"release:{name}",
                     details={"state": state.value, "run_id": run.id})
    _finish(database, run.id, RunStatus.succeeded, {"gate": gate, **metrics}, counts, captured.getvalue())
    shutil.rmtree(run.folder, ignore_errors=True)  # checkpoints and saved data are not needed once released
    return RunResult(RunStatus.succeeded, gate["summary"], run.id, name, state, body)


def _data(config: NightlyConfig, environment: Environment, database, run: _Run) -> TrainingData:  # noqa: ANN001
    if run.resumed:
        return TrainingData.load(run.folder)
    with session_scope(database) as session:
        data = prepare(session, config, run.since, environment.output_check)
    for kind, summary in data.curation.items():
        log.info("curation of %s: %s", kind, "; ".join(summary["lines"]))
    data.save(run.folder)
    return data


# ---------------------------------------------------------------- stages


def _reward_stage(config: NightlyConfig, environment: Environment, data: TrainingData, out_dir: Path) -> dict:
    """Train (or, resuming, reuse) the reward model; returns its metrics (reward.json)."""
    import json

    if (out_dir / METRICS_FILE).is_file():
        return json.loads((out_dir / METRICS_FILE).read_text(encoding="utf-8"))
    args = derive(config.training, RewardConfig, output_dir=str(out_dir.parent / "reward-checkpoints"),
                  learning_rate=config.reward.reward_learning_rate, num_train_epochs=config.reward.reward_epochs,
                  max_length=config.training.max_length, lora_r=config.adapter.lora_r, lora_alpha=config.adapter.lora_alpha,
                  lora_dropout=config.adapter.lora_dropout, lora_target_modules=list(config.adapter.lora_target_modules),
                  save_strategy="no")
    log.info("training the reward model on %d pairs", len(data.train("dpo")))
    result = train_reward_model(environment.model_path, data.train("dpo"), data.held_out("dpo"),
                                data.held_out("kto"), args, out_dir, minutes=config.reward.reward_minutes)
    return {**result.metrics, "history": result.history}


def _instruction(config: NightlyConfig, environment: Environment, data: TrainingData, run: _Run) -> dict:
    """The style instruction the candidate answers under, and where it came from (the report's):
    the styles users chose under which the golden set's facts and the length of users' answers
    hold as the gate asks (trainer/adoption.py)."""
    gate = environment.gate
    answer = adoption.active_answers(environment, run.active_adapter,
                                     config.pipeline.eval_max_tokens or environment.max_tokens)
    prompts = adoption.length_prompts(data, environment.system_prompt, config.training.seed)
    adopted, trials = adoption.adopt(chosen_styles(config, data), config.pipeline.adopt_styles, run.active_instruction,
                                     golden_set(), prompts, environment.system_prompt, answer, gate)
    for trial in trials:
        log.info("style '%s': golden-set ROUGE-L drop %.3f (at most %s), length drift %s (at most ±%s) -> %s",
                 trial.style, trial.rouge_l_drop, gate.max_golden_drop, _signed(trial.length_drift),
                 gate.max_length_drift,
                 "adopted" if trial.adopted else "holds, not adopted" if trial.holds else "not adopted")
    return {"text": release_instruction(run.active_instruction, adopted), "adopted": [style.name for style in adopted],
            "active": run.active_instruction, "checked": [trial.as_dict() for trial in trials],
            "max_golden_drop": gate.max_golden_drop, "max_length_drift": gate.max_length_drift}


def _signed(value: float | None) -> str:
    return "not measured" if value is None else f"{value:+.2f}"


def _distill_stage(config: NightlyConfig, environment: Environment, data: TrainingData, run: _Run) -> dict:
    """The answers `distill` trains on, written by the active release in the chosen styles."""
    from trainer import distill

    return distill.prepare(config, environment, data, run.active_adapter, run.folder / "distill")


def _train_recipe(choice: Choice, config: NightlyConfig, environment: Environment, data: TrainingData,
                  run: _Run) -> list[StageOutcome]:
    from trainer import dpo, grpo, kto, ppo, sft
    from trainer.rl_rewards import reward_functions, weighted_sum

    model, start, folder = environment.model_path, run.active_adapter, run.folder
    replay = config.pipeline.replay_share

    def policy(kind: str) -> list:
        return data.policy_rows(kind, replay, config.training.seed)

    stages: list[StageOutcome] = []
    if choice.recipe.startswith("sft+"):
        stages.append(sft.train(config, model, start, policy("sft"), data.held_out("sft"), folder / "sft"))
        start = stages[-1].adapter_dir
    if choice.recipe in ("dpo", "sft+dpo"):
        return [*stages, dpo.train(config, model, start, policy("dpo"), data.held_out("dpo"), folder / "dpo")]
    if choice.recipe == "distill":
        from trainer import distill

        rows = [*distill.load(folder / "distill"), *policy("dpo")]
        return [dpo.train(config, model, start, rows, data.held_out("dpo"), folder / "dpo")]
    if choice.recipe == "liked":
        return [sft.train(config, model, start, data.liked_rows(replay, config.training.seed), data.liked_held_out(),
                          folder / "sft")]
    if choice.recipe in ("kto", "sft+kto"):
        labelled = data.labelled_rows(replay, config.training.seed)
        return [*stages, kto.train(config, model, start, labelled, data.labelled_held_out(), folder / "kto")]
    judge = RewardModel.load(model, folder / "reward", device=torch_device(environment.device))
    functions, weights = reward_functions(judge, environment.reward_functions, config.rl.plugin_reward_weight)
    prompts = data.train("prompts")
    if choice.recipe == "rm+grpo":
        return [grpo.train(config, model, start, prompts, functions, weights, folder / "grpo")]
    return [ppo.train(config, model, start, prompts, weighted_sum(functions, weights), folder / "ppo")]


# ---------------------------------------------------------------- bookkeeping


def _copy(source: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    return target


def _learned_until(session: Session, active: Release) -> datetime | None:
    """When the data the active release learned from was read: feedback after it is new. A
    candidate that was never approved taught serving nothing, so its data stays new."""
    run = session.get(TrainingRun, active.training_run_id) if active.training_run_id else None
    return run.started_at if run else None


def _set_recipe(database, run_id: int, recipe: str) -> None:  # noqa: ANN001
    with session_scope(database) as session:
        run = session.get(TrainingRun, run_id)
        run.recipe = recipe
        session.add(run)


def _finish(database, run_id: int, status: RunStatus, metrics: dict, counts: dict, log_text: str) -> None:  # noqa: ANN001
    with session_scope(database) as session:
        run = session.get(TrainingRun, run_id)
        run.status, run.metrics, run.data_counts = status, metrics, counts
        run.log, run.finished_at = run.log + log_text, utcnow()
        session.add(run)


def _config_summary(config: NightlyConfig) -> dict:
    keys = ("recipe", "learning_rate", "beta", "num_train_epochs", "per_device_train_batch_size",
            "gradient_accumulation_steps", "max_steps", "lora_r", "lora_alpha", "lora_target_modules", "min_pairs",
            "min_thumbs", "holdout_fraction", "replay_share", "max_user_share", "agreement_floor", "judge",
            "eval_prompts", "loss_type", "seed")
    return {key: config.get(key) for key in keys}


def _summary(stage: StageOutcome, config: NightlyConfig) -> dict:
    """Steps, and loss and reward at the start and the end of the stage: each the mean of up to
    8 logged steps, since one RL step's figure is mostly noise (PPO logs `policy_loss`)."""
    steps = [h for h in stage.history if "loss" in h or "policy_loss" in h]
    losses = [h.get("loss", h.get("policy_loss")) for h in steps]
    rewards = [h["reward"] for h in stage.history if "reward" in h] or [h["score"] for h in stage.history if "score" in h]
    summary = {"steps": len(steps), "first loss": _end_mean(losses, first=True), "last loss": _end_mean(losses)}
    if rewards:
        summary |= {"first reward": _end_mean(rewards, first=True), "last reward": _end_mean(rewards)}
    return summary | {k: v for k, v in stage.metrics.items() if k in ("pair_accuracy", "eval_loss")}


def _end_mean(values: list[float], first: bool = False) -> float | None:
    if not values:
        return None
    size = min(8, max(1, len(values) // 4))
    end = values[:size] if first else values[-size:]
    return round(sum(end) / len(end), 4)


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
