"""Regenerate docs/support-policy.pdf, the one PDF page of the example docs.

The RAG example folder needs one PDF so the PDF loader is exercised. This
script writes a single text page with matplotlib's PdfPages (no extra
dependencies) using TrueType fonts so the text stays extractable, e.g. with
pypdf. Output is deterministic (no creation date).

Usage: python plugins/rag/example/make_pdf.py
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

OUT = Path(__file__).resolve().parent / "docs" / "support-policy.pdf"

TITLE = "Marrowlark Support and Lifecycle Policy"

# Paragraphs of the page; headings start with "## ".
BODY = [
    "This policy describes how long each Marrowlark release receives fixes "
    "and how quickly Fenwhistle Labs responds to support requests. It applies "
    "to the Studio, Guild and Citadel editions.",
    "## Release lifecycle",
    "Every minor release (for example 4.6 or 4.7) receives bug fixes and "
    "security fixes for 9 months after its first release. Long-term support "
    "(LTS) releases receive security fixes for 24 months. The current LTS "
    "release is 4.4, supported until 30 April 2026. The next LTS release is "
    "planned to be 4.8.",
    "After the end of support, a release moves to the End of Life state. "
    "Support engineers will still answer questions about End of Life releases "
    "for 60 days, but the first step of every answer will be an upgrade.",
    "## Severity levels",
    "P1: the instance is down or data is at risk.",
    "P2: a major feature such as sync or search is unusable for many users.",
    "P3: a feature is degraded or a workaround exists.",
    "P4: questions, documentation problems and feature requests.",
    "## First response targets",
    "Studio: P1 within 8 business hours, P2 within 2 business days.",
    "Guild: P1 within 4 hours, P2 within 1 business day.",
    "Citadel: P1 within 2 hours around the clock, P2 within 8 hours.",
    "Community edition users are supported on the forum The Roost only.",
    "## Support channels",
    "Tickets are opened in the customer portal. Every sync-related ticket "
    "must include a diagnostics bundle created with mlark doctor --bundle. "
    "Citadel customers also get a named support engineer and a quarterly "
    "health review of their instance.",
    "## Hotfix builds",
    "For P1 incidents on Guild and Citadel, Fenwhistle may ship a hotfix "
    "build with a version suffix such as 4.7.2-hf1. Hotfix builds are folded "
    "into the next patch release and are supported for 30 days only.",
]


def _lines() -> list[tuple[str, str]]:
    """Return (style, text) pairs, wrapping paragraphs to the page width."""
    out: list[tuple[str, str]] = [("title", TITLE), ("blank", "")]
    for para in BODY:
        if para.startswith("## "):
            out.append(("blank", ""))
            out.append(("heading", para[3:]))
            continue
        for line in textwrap.wrap(para, width=88):
            out.append(("text", line))
    return out


def main() -> None:
    matplotlib.rcParams["pdf.fonttype"] = 42  # TrueType: extractable text
    matplotlib.rcParams["pdf.compression"] = 6
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with PdfPages(OUT, metadata={"Title": TITLE, "CreationDate": None}) as pdf:
        fig = plt.figure(figsize=(8.27, 11.69))  # A4 portrait, inches
        y = 0.95
        for style, text in _lines():
            if style == "title":
                fig.text(0.07, y, text, fontsize=15, fontweight="bold", va="top")
                y -= 0.03
            elif style == "heading":
                fig.text(0.07, y, text, fontsize=12, fontweight="bold", va="top")
                y -= 0.024
            elif style == "blank":
                y -= 0.008
            else:
                fig.text(0.07, y, text, fontsize=9.5, va="top")
                y -= 0.019
        pdf.savefig(fig)
        plt.close(fig)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
