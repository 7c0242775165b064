"""Block Kit for every message and modal the app sends; no Slack calls here.

Buttons carry what their listener needs (response ids, positions, a release name) in
their `value`, so a press needs no lookup of the message it came from.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

from feedback.protocol import DOWN_REASONS

SECTION_LIMIT = 3000  # Slack refuses a section text longer than this
THUMB_UP, THUMB_DOWN = "tl_thumb_up", "tl_thumb_down"
COMPARE = {"a_better": "A better", "b_better": "B better", "tie": "Tie", "both_bad": "Both bad"}
CORRECT = "tl_correct"
RELEASE_ACTIONS = ("tl_release_approve", "tl_release_canary", "tl_release_reject")
DOWN_REASON_MODAL, CORRECTION_MODAL = "tl_down_reason", "tl_correction"
EMOJI = {"up": ":thumbsup:", "down": ":thumbsdown:"}
WINNER_WORDS = {"a": "A is better", "b": "B is better", "tie": "a tie", "both_bad": "both bad"}


def _section(text: str) -> dict:
    text = text if len(text) <= SECTION_LIMIT else text[: SECTION_LIMIT - 1] + "…"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text or " "}}


def _context(text: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _button(text: str, action_id: str, value: str, style: str | None = None) -> dict:
    button = {"type": "button", "text": {"type": "plain_text", "text": text, "emoji": True},
              "action_id": action_id, "value": value}
    if style:
        button["style"] = style
    return button


def writing(texts: Sequence[str]) -> list[dict]:
    """An answer (or an A/B pair, in display order) while it is being generated."""
    if len(texts) == 1:
        return [_section(texts[0] or "…"), _context("_writing…_")]
    return [*_pair(texts), _context("_writing two answers…_")]


def answer(response_id: uuid.UUID, text: str) -> list[dict]:
    """A finished answer with thumbs."""
    value = str(response_id)
    return [_section(text),
            {"type": "actions", "block_id": f"vote:{value}",
             "elements": [_button(":thumbsup:", THUMB_UP, value), _button(":thumbsdown:", THUMB_DOWN, value)]}]


def comparison(shown: Sequence[str], pair: dict) -> list[dict]:
    """Two answers in display order, A above B, with the four choices.

    `pair` is {"a": response id, "b": response id, "a_position": where "a" is shown}.
    """
    value = json.dumps(pair)
    return [*_pair(shown), {"type": "actions", "block_id": "compare",
                            "elements": [_button(label, f"tl_compare_{key}", value) for key, label in COMPARE.items()]}]


def with_votes(message_blocks: Sequence[dict], votes: dict[str, str]) -> list[dict]:
    """The message as it was, with its line of who voted what (Slack id -> up/down) redrawn."""
    line = "Votes: " + " · ".join(f"{EMOJI[v]} <@{who}>" for who, v in sorted(votes.items())) if votes else ""
    return _with_line(message_blocks, "tl_votes", line)


def with_choices(message_blocks: Sequence[dict], choices: dict[str, str]) -> list[dict]:
    """The message with its line of who chose what (Slack id -> a/b/tie/both_bad) redrawn."""
    line = "Chosen: " + " · ".join(f"<@{who}>: {WINNER_WORDS[w]}" for who, w in sorted(choices.items()))
    return _with_line(message_blocks, "tl_choices", line if choices else "")


def _with_line(message_blocks: Sequence[dict], block_id: str, line: str) -> list[dict]:
    kept = [b for b in message_blocks if b.get("block_id") != block_id]
    return kept + ([{**_context(line), "block_id": block_id}] if line else [])


def _pair(shown: Sequence[str]) -> list[dict]:
    return [_section(f"*A*\n{shown[0] or '…'}"), {"type": "divider"}, _section(f"*B*\n{shown[1] or '…'}")]


def review_context(history: Sequence[tuple[str, str]]) -> list[dict]:
    """The conversation so far, shortened, above a review task."""
    lines = [f"*{role}:* {text if len(text) < 300 else text[:299] + '…'}" for role, text in history[-6:]]
    return [_context("\n".join(lines) or "_no earlier messages_")]


def rate_task(prompt: str, history: Sequence[tuple[str, str]], response_id: uuid.UUID, text: str) -> list[dict]:
    value = str(response_id)
    return [
        _section(":mag: *Review: rate this answer*"),
        *review_context(history),
        _section(f"*Prompt*\n{prompt}"),
        _section(f"*Answer*\n{text}"),
        {"type": "actions", "block_id": f"review:{value}", "elements": [
            _button(":thumbsup:", THUMB_UP, value), _button(":thumbsdown:", THUMB_DOWN, value),
            _button("Write a better answer", CORRECT, value, "primary")]},
    ]


def compare_task(prompt: str, history: Sequence[tuple[str, str]], shown: Sequence[str], pair: dict) -> list[dict]:
    return [_section(":mag: *Review: which answer is better?*"), *review_context(history),
            _section(f"*Prompt*\n{prompt}"), *comparison(shown, pair)]


def down_reason_modal(metadata: dict) -> dict:
    options = [{"text": {"type": "plain_text", "text": r.replace("_", " ")}, "value": r} for r in DOWN_REASONS]
    return {
        "type": "modal", "callback_id": DOWN_REASON_MODAL, "private_metadata": json.dumps(metadata),
        "title": {"type": "plain_text", "text": "What went wrong?"},
        "submit": {"type": "plain_text", "text": "Send"},
        "blocks": [
            {"type": "input", "block_id": "reason", "label": {"type": "plain_text", "text": "Reason"},
             "element": {"type": "radio_buttons", "action_id": "value", "options": options}},
            {"type": "input", "block_id": "comment", "optional": True, "label": {"type": "plain_text", "text": "Comment"},
             "element": {"type": "plain_text_input", "action_id": "value", "multiline": True, "max_length": 2000}},
        ],
    }


def correction_modal(response_id: uuid.UUID, answer_text: str) -> dict:
    return {
        "type": "modal", "callback_id": CORRECTION_MODAL, "private_metadata": str(response_id),
        "title": {"type": "plain_text", "text": "A better answer"},
        "submit": {"type": "plain_text", "text": "Save"},
        "blocks": [
            _context(f"*The answer:* {answer_text[:2500]}"),
            {"type": "input", "block_id": "text", "label": {"type": "plain_text", "text": "The answer it should give"},
             "element": {"type": "plain_text_input", "action_id": "value", "multiline": True,
                         "initial_value": answer_text[:3000]}},
            {"type": "input", "block_id": "comment", "optional": True, "label": {"type": "plain_text", "text": "Why"},
             "element": {"type": "plain_text_input", "action_id": "value"}},
        ],
    }


def release_candidate(name: str, report: dict, report_url: str, canary_share: float) -> list[dict]:
    """A candidate's gate figures for the operators' channel, with the three decisions."""
    gate = report.get("gate", {})
    figures = [f"*{c['name'].capitalize()}*\n{_figure(c.get('value'))} (needs ≥ {c['threshold']})"
               for c in gate.get("checks", [])]
    win = (report.get("evaluation") or {}).get("win_rate")
    if win:
        figures.append(f"*Win rate*\n{win['rate']:.2f} [{win['low']:.2f}–{win['high']:.2f}], "
                       f"{win['wins']}W / {win['ties']}T / {win['losses']}L")
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Release {name} is a candidate"}},
        _section(gate.get("summary", "No gate summary in the report.")),
    ]
    if figures:
        blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in figures[:10]]})
    if report_url:
        blocks.append(_section(f"<{report_url}|Full report>"))
    blocks.append({"type": "actions", "block_id": f"release:{name}", "elements": [
        _button("Approve", RELEASE_ACTIONS[0], name, "primary"),
        _button(f"Approve as canary ({canary_share:.0%})", RELEASE_ACTIONS[1], name),
        _button("Reject", RELEASE_ACTIONS[2], name, "danger"),
    ]})
    return blocks


CANARY_HEADLINES = {
    "rollback": "Canary {name} was rolled back automatically",
    "promote": "Canary {name} was promoted automatically",
    "ask_promote": "Canary {name} looks better: promote it?",
    "inconclusive": "Canary {name}: users cannot tell it from the active release",
}
CANARY_UNDO = {
    "rollback": "Disagree? `tuneloop releases approve {name} --canary 0.2` starts it again on fresh evidence.",
    "promote": "Disagree? `tuneloop releases rollback` restores the release it replaced.",
    "ask_promote": "`tuneloop releases promote` makes it active; `tuneloop releases rollback` ends it.",
    "inconclusive": "`tuneloop releases promote` or `tuneloop releases rollback`: an operator decides.",
}


def canary_decision(name: str, details: dict, report_url: str) -> list[dict]:
    """A canary's own decision for the operators' channel: what, why, and how to undo it."""
    decision = details.get("decision", "")
    evidence = details.get("evidence", {})
    metrics = evidence.get("metrics", {})
    lines = [details.get("reason", ""), f"Events so far: {evidence.get('events', 0)}."]
    for side in ("canary", "active"):
        figures = metrics.get(side, {})
        down = (figures.get("thumbs_down_rate") or {}).get("rate")
        lines.append(f"*{side}*: {figures.get('answers', 0)} answers, thumbs down "
                     f"{_figure(down)}, {figures.get('errors', 0)} errors")
    blocks = [{"type": "header", "text": {"type": "plain_text",
                                          "text": CANARY_HEADLINES.get(decision, "Canary {name}").format(name=name)}},
              _section("\n".join(lines))]
    if report_url:
        blocks.append(_section(f"<{report_url}|Report and evidence>"))
    blocks.append(_context(CANARY_UNDO.get(decision, "").format(name=name)))
    return blocks


def release_decided(blocks: Sequence[dict], line: str) -> list[dict]:
    """The announcement with its buttons replaced by who decided what."""
    return [b for b in blocks if b.get("type") != "actions"] + [_context(line)]


def _figure(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.3f}"
