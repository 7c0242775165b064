"""`tuneloop tune`: an Optuna search for the nightly DPO run's knobs, on the stored feedback.

Each trial trains a LoRA adapter as the nightly job's DPO stage does (`trainer.dpo.train`)
in a temporary folder, removed after the trial, and is scored on the held-out pairs: the share
where the DPO implicit reward prefers the chosen answer, ties broken by the eval loss. The
best trial's knobs go to `<data_dir>/tune/best.json` (with the study's summary) beside a
plot of the search, `history.png`; `tuneloop train` then starts from them
(NightlyConfig defaults < best.json < flags given on its command line, see `apply_tuned`).

When the active release already has an adapter, the nightly run continues training it,
so its rank and wrapped modules are fixed: the search then leaves the LoRA shape out.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from store import releases
from store.db import make_engine, session_scope
from store.migrate import upgrade
from store.models import RunStatus
from trainer.config import NightlyConfig
from trainer.datasets import Split

log = logging.getLogger("tuneloop.trainer.tune")

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
TARGET_LAYERS = {"attention": ATTENTION, "attention+mlp": [*ATTENTION, "gate_proj", "up_proj", "down_proj"]}
TUNED_FILE = "best.json"
TIED = {"lora_alpha": "lora_r"}  # alpha follows the rank: an explicit --lora_r keeps the tuned alpha out too


@dataclass
class TuneConfig:
    trials: int | None = 20  # this run's trials (None: until the timeout)
    timeout: float | None = None  # seconds; no trial starts after it (the one running finishes)
    # The search space: (low, high) ranges and lists of choices.
    learning_rate: tuple[float, float] = (1e-5, 5e-4)  # searched on a log scale
    beta: tuple[float, float] = (0.02, 0.5)
    lora_r: tuple[int, ...] = (4, 8, 16, 32)  # alpha keeps the training config's alpha/r ratio
    target_layers: tuple[str, ...] = ("attention", "attention+mlp")  # names in TARGET_LAYERS
    epochs: tuple[int, int] = (1, 3)
    seed: int = 0  # the sampler's
    storage: str | None = None  # an Optuna RDB URL (sqlite:///tune.db) to keep the study and resume it
    study_name: str = "tuneloop-dpo"
    training: NightlyConfig | None = None  # every other knob of each trial; None: NightlyConfig()
    progress: bool = True  # Optuna's progress bar

    def __post_init__(self) -> None:
        for name in ("learning_rate", "beta", "epochs"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"the {name} range must be 0 < low <= high, not {low}..{high}")
        unknown = set(self.target_layers) - set(TARGET_LAYERS)
        if unknown or not self.target_layers:
            raise ValueError(f"target layers are among {', '.join(TARGET_LAYERS)}, not {sorted(unknown)}")
        if not self.lora_r or min(self.lora_r) < 1:
            raise ValueError("LoRA ranks must be positive")
        if self.trials is None and self.timeout is None:
            raise ValueError("give a number of trials, a timeout, or both")


@dataclass
class TuneResult:
    status: RunStatus
    message: str
    params: dict = field(default_factory=dict)  # NightlyConfig field -> value, as written to best.json
    value: float | None = None  # the best held-out pair accuracy
    eval_loss: float | None = None
    trials: int = 0  # completed trials in the study (a resumed study counts earlier ones too)
    best_path: Path | None = None
    plot_path: Path | None = None


def parse_search(text: str, kind: type) -> tuple:
    """'1e-5,5e-4' -> (1e-05, 0.0005): a command line's range or list of choices."""
    return tuple(kind(part.strip()) for part in text.split(",") if part.strip())


def load_data(environment, config: NightlyConfig) -> tuple[str | None, Split]:
    """The adapter to train on (the active release's; None: the base model) and the pairs, split:
    the nightly run's own curated data (`trainer.data.prepare`), every stored pair."""
    from trainer.data import prepare

    database = make_engine(environment.database_url)
    try:
        upgrade(database)
        with session_scope(database) as session:
            active = releases.active_release(session)
            data = prepare(session, config, since=None, check=environment.output_check)
            return (active.adapter_path if active else None), data.splits["dpo"]
    finally:
        database.dispose()


def main(config: TuneConfig, environment) -> TuneResult:
    import optuna

    base = config.training if config.training is not None else NightlyConfig()
    adapter, split = load_data(environment, base)
    pairs = len(split.train) + len(split.held_out)
    if pairs < base.pipeline.min_pairs or not split.train or not split.held_out:
        message = (f"too little data to tune on: {pairs} preference pairs ({len(split.train)} to train on, "
                   f"{len(split.held_out)} held out), need at least {base.pipeline.min_pairs} with some on each side")
        log.info(message)
        return TuneResult(RunStatus.skipped, message)

    folder = Path(environment.data_dir) / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    shape = adapter is None  # a new adapter: its rank and modules are ours to pick
    study = optuna.create_study(storage=config.storage, study_name=config.study_name, load_if_exists=True,
                                direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed))
    log.info("tuning on %d pairs (%d held out)%s; %s trials, timeout %s s", len(split.train), len(split.held_out),
             "" if shape else ", LoRA shape fixed by the active adapter", config.trials, config.timeout)
    objective = _objective(config, base, environment.model_path, adapter, split, folder, shape)
    study.optimize(objective, n_trials=config.trials, timeout=config.timeout, catch=(RuntimeError,),
                   show_progress_bar=config.progress, gc_after_trial=True)

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return TuneResult(RunStatus.failed, f"no trial finished ({len(study.trials)} started)", trials=0)
    best = max(done, key=_rank)
    summary = {
        "params": best.user_attrs["config"],
        "study": {"name": config.study_name, "storage": _without_password(config.storage), "trials": len(done),
                  "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials),
                  "best_trial": best.number, "best_value": best.value, "eval_loss": best.user_attrs.get("eval_loss"),
                  "metric": "held-out pair accuracy (DPO implicit reward), ties broken by eval loss",
                  "search_params": best.params, "search_space": _space(config, shape)},
        "data": {**split.counts(), "active_adapter": adapter},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    best_path = _write_json(folder / TUNED_FILE, summary)
    plot_path = plot_history(done, best, folder / "history.png")
    message = (f"best of {len(done)} trials: pair accuracy {best.value:.3f}"
               f" (eval loss {_fmt(best.user_attrs.get('eval_loss'))}) with {_describe(summary['params'])}")
    log.info(message)
    return TuneResult(RunStatus.succeeded, message, summary["params"], best.value, best.user_attrs.get("eval_loss"),
                      len(done), best_path, plot_path)


def _objective(config: TuneConfig, base: NightlyConfig, model_path: str, adapter: str | None, split: Split,
               folder: Path, shape: bool):
    from trainer import dpo

    def objective(trial) -> float:
        params = suggest(trial, config, base, shape)
        with tempfile.TemporaryDirectory(prefix=f"trial-{trial.number}-", dir=folder) as scratch:
            trial_config = trial_training_config(base, {**params, "output_dir": str(Path(scratch) / "checkpoints")})
            outcome = dpo.train(trial_config, model_path, adapter, split.train, split.held_out, Path(scratch))
        eval_loss = outcome.metrics.get("eval_loss")
        trial.set_user_attr("config", params)
        trial.set_user_attr("eval_loss", eval_loss)
        return outcome.pair_accuracy if outcome.pair_accuracy is not None else math.nan

    return objective


def suggest(trial, config: TuneConfig, base: NightlyConfig, shape: bool) -> dict:
    """One point of the search space, as NightlyConfig fields."""
    params = {
        "learning_rate": trial.suggest_float("learning_rate", *config.learning_rate, log=True),
        "beta": trial.suggest_float("beta", *config.beta),
        "num_train_epochs": float(trial.suggest_int("epochs", *config.epochs)),
    }
    if shape:
        rank = trial.suggest_categorical("lora_r", list(config.lora_r))
        layers = trial.suggest_categorical("target_layers", list(config.target_layers))
        params |= {"lora_r": rank, "lora_alpha": max(1, round(rank * base.adapter.lora_alpha / base.adapter.lora_r)),
                   "lora_target_modules": list(TARGET_LAYERS[layers])}
    return params


def trial_training_config(base: NightlyConfig, params: dict) -> NightlyConfig:
    """The base config with a trial's knobs: no checkpoints, no per-step logs (Optuna's bar shows progress)."""
    from transformers.trainer_utils import IntervalStrategy, SaveStrategy

    return base.replace(**params, save_strategy=SaveStrategy.NO, load_best_model_at_end=False, disable_tqdm=True,
                        logging_strategy=IntervalStrategy.NO,
                        resume=False)  # every trial starts afresh in its own folder


def apply_tuned(config: NightlyConfig, data_dir: Path, explicit: set[str]) -> tuple[NightlyConfig, list[str]]:
    """`config` with the knobs `tuneloop tune` found best, except those given explicitly, and
    their names.

    Precedence: NightlyConfig defaults < best.json < explicit flags."""
    path = Path(data_dir) / "tune" / TUNED_FILE
    if not path.is_file():
        return config, []
    params = json.loads(path.read_text())["params"]
    applied = {}
    for name, value in params.items():
        if name in explicit or TIED.get(name) in explicit or not _is_knob(config, name):
            continue
        applied[name] = value
    return config.replace(**applied), list(applied)


def _is_knob(config: NightlyConfig, name: str) -> bool:
    try:
        config.get(name)
    except AttributeError:
        return False
    return True


def explicit_flags(args: Sequence[str]) -> set[str]:
    """The config fields a command line sets: `--lora_r 8`, `--lora-r=8`, `--no_bf16` (bool off)."""
    names = set()
    for arg in args:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0].replace("-", "_")
            names |= {name, name.removeprefix("no_")}
    return names


def plot_history(trials, best, path: Path) -> Path:
    """Each trial's held-out pair accuracy and the best so far, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    trials = sorted(trials, key=lambda t: t.number)
    numbers, values = [t.number for t in trials], [t.value for t in trials]
    running = [max(values[: i + 1]) for i in range(len(values))]
    figure = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.plot(numbers, values, "o", color="tab:blue", label="trial")
    axes.step(numbers, running, where="post", color="tab:red", label="best so far")
    axes.plot([best.number], [best.value], "*", markersize=14, color="tab:red", label=f"chosen (#{best.number})")
    axes.set_xlabel("trial")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylim(-0.05, 1.05)
    axes.set_ylabel("held-out pair accuracy")
    axes.set_title("tuneloop tune: optimization history")
    axes.legend(loc="lower right")
    figure.tight_layout()
    staging = path.with_suffix(".tmp.png")
    figure.savefig(staging)
    staging.replace(path)
    return path


def _rank(trial) -> tuple[float, float]:
    loss = trial.user_attrs.get("eval_loss")
    return trial.value, -(loss if loss is not None else math.inf)


def _space(config: TuneConfig, shape: bool) -> dict:
    space = {"learning_rate": {"low": config.learning_rate[0], "high": config.learning_rate[1], "log": True},
             "beta": {"low": config.beta[0], "high": config.beta[1]},
             "epochs": {"low": config.epochs[0], "high": config.epochs[1]}}
    if shape:
        space |= {"lora_r": list(config.lora_r), "target_layers": list(config.target_layers)}
    return space


def _without_password(url: str | None) -> str | None:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True) if url else None


def _write_json(path: Path, body: dict) -> Path:
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(body, indent=2, default=str) + "\n")
    staging.replace(path)  # never half-written
    return path


def _describe(params: dict) -> str:
    shown = {k: (f"{v:.3g}" if isinstance(v, float) else ",".join(v) if isinstance(v, list) else v)
             for k, v in params.items()}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
