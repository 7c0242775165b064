"""The evaluation report an operator approves from: JSON for machines, HTML with plots for people.

The body (built by the nightly job) has: release, run_id, recipe, recipe_reason, base_release,
created_at, data, curation, gate, evaluation (`Evaluation.as_dict()` plus pair_accuracy and
reward_pair_accuracy), reward_model, training ({"stages": {name: {"history", "summary"}}}) and
checksum. Any part may be missing: its section says so and its plots are left out. Reports of
the earlier shape (one `training.history`, one `evaluation.win_rate`) render too.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, Undefined, select_autoescape

TEMPLATES = Path(__file__).parent / "templates"
CANDIDATE_COLOR, ACTIVE_COLOR, TIE_COLOR = "#5b4bdb", "#d9534f", "#9e9e9e"
REWARD_KEYS = ("rewards/margins", "reward", "score")  # DPO's implicit margin, GRPO/PPO rewards, reward model
LABEL_WIDTH = 40  # characters of a topic shown on a plot axis


# ------------------------------------------------------------------ reading the body


def stages(training: Mapping | None) -> dict[str, dict]:
    """stage name -> {"history", "summary"}; an earlier report's single history is one stage."""
    training = training or {}
    if training.get("stages"):
        return {name: {"history": stage.get("history") or [], "summary": stage.get("summary") or {}}
                for name, stage in training["stages"].items()}
    if training.get("history") or training.get("summary"):
        return {"training": {"history": training.get("history") or [], "summary": training.get("summary") or {}}}
    return {}


def win_rates(evaluation: Mapping | None) -> dict[str, dict]:
    """judge name -> win rate dict; an earlier report's single `win_rate` under its judge's name."""
    evaluation = evaluation or {}
    if evaluation.get("win_rates"):
        return dict(evaluation["win_rates"])
    single = evaluation.get("win_rate")
    return {single.get("judge", "judge"): single} if single else {}


def examples(evaluation: Mapping | None) -> list[dict]:
    """The evaluation's examples, or the primary judge's (earlier reports kept them there)."""
    evaluation = evaluation or {}
    if evaluation.get("examples"):
        return list(evaluation["examples"])
    rates = win_rates(evaluation)
    primary = rates.get(evaluation.get("primary_judge")) or next(iter(rates.values()), None)
    return [{"kind": "held-out", **example} for example in (primary or {}).get("examples", [])]


# ------------------------------------------------------------------ plots


def _pyplot():  # matplotlib is imported only when a report is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _series(history: list[dict], key: str) -> list[tuple[float, float]]:
    return [(h.get("step", i), h[key]) for i, h in enumerate(history) if isinstance(h.get(key), (int, float))]


def _per_stage(stage_map: Mapping[str, dict], keys: tuple[str, ...]) -> dict[str, dict[str, list]]:
    """stage -> key -> (step, value) points, for the stages and keys that have any."""
    found = {}
    for name, stage in stage_map.items():
        curves = {key: _series(stage.get("history") or [], key) for key in keys}
        curves = {key: points for key, points in curves.items() if points}
        if curves:
            found[name] = curves
    return found


def _stage_grid(curves: dict[str, dict[str, list]], ylabel: str) -> str | None:
    """One small plot per stage, each with its own curves (losses of different stages differ in scale)."""
    if not curves:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(len(curves), 1, figsize=(6.5, 2.6 * len(curves)), squeeze=False)
    for axis, (name, series) in zip(axes[:, 0], curves.items()):
        for key, points in series.items():
            style = "o" if key.startswith("eval") else "-"
            axis.plot(*zip(*points), style, label=key, markersize=4)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("step")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


def loss_plot(stage_map: Mapping[str, dict] | list | None) -> str | None:
    """Training (line) and held-out (dots) loss, one plot per stage."""
    if isinstance(stage_map, list):  # a bare history
        stage_map = {"training": {"history": stage_map}}
    return _stage_grid(_per_stage(stage_map or {}, ("loss", "eval_loss")), "loss")


def reward_plot(stage_map: Mapping[str, dict] | None) -> str | None:
    """Reward curves the trainers log (DPO's reward margin, GRPO's reward, a reward model's score), per stage."""
    return _stage_grid(_per_stage(stage_map or {}, REWARD_KEYS), "reward")


def win_rates_plot(rates: Mapping[str, dict] | None, threshold: float | None = None) -> str | None:
    """Each judge's win rate with its 95% interval; the dashed line is a coin flip, the dotted one the gate."""
    rates = {name: rate for name, rate in (rates or {}).items() if rate and rate.get("n")}
    if not rates:
        return None
    plt = _pyplot()
    names = list(rates)
    figure, axis = plt.subplots(figsize=(max(4.0, 1.4 * len(names) + 2), 3.2))
    _rate_bars(axis, names, [rates[n] for n in names], vertical=True)
    for i, name in enumerate(names):
        rate = rates[name]
        axis.annotate(f"{rate['wins']}W {rate['ties']}T {rate['losses']}L", (i, 0.02), ha="center", fontsize=8,
                      color="white")
    axis.axhline(0.5, color=TIE_COLOR, linestyle="--", linewidth=1)
    if threshold is not None:
        axis.axhline(threshold, color=ACTIVE_COLOR, linestyle=":", linewidth=1, label=f"gate {threshold:g}")
        axis.legend(fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("win rate against active (95% CI)")
    return _png(figure)


def _rate_bars(axis, labels: list[str], rates: list[dict], vertical: bool) -> None:
    values = [r["rate"] or 0.0 for r in rates]
    errors = [[v - r["low"] for v, r in zip(values, rates)], [r["high"] - v for v, r in zip(values, rates)]]
    positions = range(len(labels))
    if vertical:
        axis.bar(positions, values, yerr=errors, capsize=6, color=CANDIDATE_COLOR)
        axis.set_xticks(list(positions), labels)
    else:
        axis.barh(positions, values, xerr=errors, capsize=4, color=CANDIDATE_COLOR)
        axis.set_yticks(list(positions), labels)
        axis.invert_yaxis()


def topics_plot(topics: list[dict] | None) -> str | None:
    """The primary judge's win rate per topic, with 95% intervals."""
    topics = [t for t in topics or [] if t.get("n")]
    if not topics:
        return None
    plt = _pyplot()
    labels = [_short(f"{t['topic']} (n={t['n']})") for t in topics]
    figure, axis = plt.subplots(figsize=(7, 0.45 * len(topics) + 1.2))
    _rate_bars(axis, labels, topics, vertical=False)
    axis.axvline(0.5, color=TIE_COLOR, linestyle="--", linewidth=1)
    axis.set_xlim(0, 1)
    axis.set_xlabel("win rate against active (95% CI)")
    return _png(figure)


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= LABEL_WIDTH else flat[:LABEL_WIDTH - 1] + "…"


def golden_plot(golden: Mapping | None) -> str | None:
    """ROUGE-L F and BLEU on the golden set, candidate beside active."""
    if not golden or not golden.get("n"):
        return None
    ours, theirs = golden.get("candidate") or {}, golden.get("active") or {}
    metrics = [(key, label, top) for key, label, top in (("rouge_l", "ROUGE-L F", 1), ("bleu", "BLEU", 100))
               if ours.get(key) is not None and theirs.get(key) is not None]
    if not metrics:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 0.5, 3), squeeze=False)
    for axis, (key, label, top) in zip(axes[0], metrics):
        axis.bar(["candidate", "active"], [ours[key], theirs[key]], color=[CANDIDATE_COLOR, ACTIVE_COLOR])
        axis.set_ylim(0, top)
        axis.set_title(f"{label} on {golden['n']} golden prompts", fontsize=10)
    figure.tight_layout()
    return _png(figure)


def plots(report: Mapping) -> dict[str, str | None]:
    evaluation = report.get("evaluation") or {}
    stage_map = stages(report.get("training"))
    return {
        "loss": loss_plot(stage_map),
        "reward": reward_plot(stage_map),
        "win_rates": win_rates_plot(win_rates(evaluation), _gate_threshold(report, "win_rate")),
        "topics": topics_plot(evaluation.get("topics")),
        "golden": golden_plot(evaluation.get("golden")),
    }


def _gate_threshold(report: Mapping, key: str) -> float | None:
    for check in (report.get("gate") or {}).get("checks", []):
        if check.get("key") == key:
            return check.get("threshold")
    return None


# ------------------------------------------------------------------ HTML and JSON


def number(value: Any, digits: int = 3) -> str:
    """A figure as the report shows it: floats rounded, None as "not measured"."""
    if value is None or isinstance(value, Undefined):  # a key the body does not have
        return "not measured"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.{digits}f}"


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as (dotted name, value) rows for a two-column table."""
    if not isinstance(value, Mapping):
        return [(prefix, value)]
    rows = []
    for key, inner in value.items():
        rows += flatten(inner, f"{prefix}.{key}" if prefix else str(key))
    return rows


def render_html(report: Mapping) -> str:
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape())
    environment.filters.update(number=number, flatten=flatten)
    evaluation = report.get("evaluation") or {}
    view = {
        "gate": report.get("gate") or {},
        "evaluation": evaluation,
        "win_rates": win_rates(evaluation),
        "examples": examples(evaluation),
        "stages": stages(report.get("training")),
        "curation": report.get("curation"),
        "reward_model": report.get("reward_model"),
        "data": report.get("data") or {},
    }
    return environment.get_template("report.html").render(report=report, view=view, plots=plots(report))


def write(report: dict, folder: Path) -> tuple[Path, Path]:
    """report.json and report.html side by side in the release's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / "report.json", folder / "report.html"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    html_path.write_text(render_html(report))
    return json_path, html_path
