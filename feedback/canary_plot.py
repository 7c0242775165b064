"""The canary's sequential statistics over its events, against their boundaries: the picture an
operator reads to see how near a decision is, and which metric drives it."""

from __future__ import annotations

import base64
import io
from html import escape


def plot_png(status: dict) -> str | None:
    """The plot as base64 PNG; None with no history yet."""
    history = status.get("history") or []
    if len(history) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 3.6))
    events = [point["events"] for point in history]
    for name, test in (status.get("tests") or {}).items():
        axes.plot(events, [point.get(name, 0.0) for point in history], label=f"{test['metric']} (rollback)")
    axes.plot(events, [point.get("promotion", 0.0) for point in history], linestyle="--", label="promotion")
    boundaries = {round(test["boundary"], 3) for test in (status.get("tests") or {}).values()}
    for boundary in sorted(boundaries):
        axes.axhline(boundary, color="firebrick", linewidth=0.8)
    promotion = status.get("promotion") or {}
    if promotion.get("boundary") is not None:
        axes.axhline(promotion["boundary"], color="seagreen", linewidth=0.8, linestyle="--")
    axes.set_xlabel("events (choices, thumbs, stars)")
    axes.set_ylabel("log likelihood ratio")
    axes.set_title("Canary: sequential statistics against their boundaries")
    axes.legend(fontsize=7, loc="upper left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def html_section(status: dict) -> str:
    """The canary's section of the release's report page."""
    decision = status.get("decision") or {}
    picture = plot_png(status)
    image = (f'<img alt="canary statistics over events" src="data:image/png;base64,{picture}">' if picture
             else '<p class="muted">Too few looks yet for a plot.</p>')
    return (f'<h2 id="canary">Canary</h2><p>Since {escape(str(status.get("since")))}: {status.get("events", 0)} '
            f'events; last decision: <b>{escape(str(decision.get("action")))}</b> '
            f'({escape(str(decision.get("reason")))}).</p>{image}'
            f'<p class="muted">{escape(str(status.get("method", "")))}</p>')
