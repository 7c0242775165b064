"""The evaluation report an operator approves from: JSON for machines, HTML with plots for people."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES = Path(__file__).parent / "templates"


def _png(figure) -> str:  # noqa: ANN001
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def loss_plot(history: list[dict]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    held_out = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if not train:
        return None
    figure, axis = plt.subplots(figsize=(6, 3.2))
    axis.plot(*zip(*train), label="training loss", color="#5b4bdb")
    if held_out:
        axis.plot(*zip(*held_out), "o", label="held-out loss", color="#d9534f")
    axis.set_xlabel("step")
    axis.set_ylabel("DPO loss")
    axis.grid(alpha=0.3)
    axis.legend()
    encoded = _png(figure)
    plt.close(figure)
    return encoded


def win_rate_plot(win_rate: dict | None) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not win_rate or not win_rate.get("n"):
        return None
    figure, (bars, interval) = plt.subplots(1, 2, figsize=(7.5, 3), gridspec_kw={"width_ratios": [3, 2]})
    counts = [win_rate["wins"], win_rate["ties"], win_rate["losses"]]
    bars.bar(["candidate wins", "ties", "active wins"], counts, color=["#5b4bdb", "#9e9e9e", "#d9534f"])
    bars.set_ylabel("held-out prompts")
    rate = win_rate["rate"]
    interval.errorbar([0], [rate], yerr=[[rate - win_rate["low"]], [win_rate["high"] - rate]], fmt="o",
                      color="#5b4bdb", capsize=8)
    interval.axhline(0.5, color="#9e9e9e", linestyle="--", linewidth=1)
    interval.set_ylim(0, 1)
    interval.set_xticks([])
    interval.set_ylabel("win rate (95% CI)")
    encoded = _png(figure)
    plt.close(figure)
    return encoded


def write(report: dict, folder: Path) -> tuple[Path, Path]:
    """report.json and report.html side by side in the release's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / "report.json", folder / "report.html"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    html_path.write_text(render_html(report))
    return json_path, html_path


def render_html(report: dict) -> str:
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape())
    plots = {
        "loss": loss_plot(report.get("training", {}).get("history", [])),
        "win_rate": win_rate_plot(report.get("evaluation", {}).get("win_rate")),
    }
    return environment.get_template("report.html").render(report=report, plots=plots)
