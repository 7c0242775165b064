"""Curation: small steps over the rows `feedback/export.py` builds, each returning
`(kept_rows, StepReport)`, and `curate` chaining them into one `CurationReport`.

Order in `curate` (each step sees the previous one's output):
  scrub personal data -> agreement (floor check, disputes dropped or down-weighted)
  -> duplicates -> per-user cap -> golden prompts dropped -> replay of earlier rows -> golden again.
Agreement comes before de-duplication because two people's identical judgments of one item
are exact duplicates, and they are exactly what agreement is measured on.

Row has no free metadata field, so a down-weighted row carries its weight in
`row.data["weight"]` (every row gets one when any weight is set, so the column is whole).
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from feedback.export import Row
from trainer.datasets import jaccard, linked_groups, normalize, prompt_groups, trigrams

GOLDEN_PATH = Path(__file__).parent / "golden" / "golden.jsonl"
TextCheck = Callable[[str], str]
DisputeMode = Literal["drop", "downweight"]


class CurationBlocked(RuntimeError):
    """The run must not train on this data; the message says why and what to do."""


class GoldenLeak(CurationBlocked):
    """A golden (evaluation-only) prompt is in the training rows."""


@dataclass
class StepReport:
    name: str
    removed: int
    notes: dict[str, Any] = field(default_factory=dict)
    changed: int = 0  # rows kept but rewritten (scrubbing) or re-weighted


@dataclass
class CurationConfig:
    near_threshold: float = 0.9  # trigram Jaccard at or above which two rows are near duplicates
    max_user_share: float = 0.2  # no user in more than this share of the rows
    agreement_floor: float = 0.4  # Krippendorff's alpha below this blocks the run ...
    min_shared_items: int = 20  # ... when at least this many items were judged by two or more people
    dispute_mode: DisputeMode = "drop"
    replay_share: float = 0.0  # share of the result drawn from earlier rows
    seed: int = 0
    golden_path: Path | None = None  # None: the bundled golden set
    scrub: bool = True


@dataclass
class CurationReport:
    rows_in: int
    rows_out: int = 0
    steps: list[StepReport] = field(default_factory=list)
    agreement: AgreementResult | None = None

    def removed(self) -> dict[str, int]:
        return {step.name: step.removed for step in self.steps}

    def lines(self) -> list[str]:
        out = [f"rows in: {self.rows_in}"]
        for step in self.steps:
            extra = f", {step.changed} changed" if step.changed else ""
            out.append(f"{step.name}: {step.removed} removed{extra} {step.notes or ''}".rstrip())
        out.append(f"rows out: {self.rows_out}")
        return out


# --- duplicates --------------------------------------------------------------------------------

def _answers(row: Row) -> list[str]:
    """The row's answer texts by role in the format: chosen/rejected, completion, or the SFT target."""
    data = row.data
    if "chosen" in data:
        return [_text(data["chosen"]), _text(data.get("rejected", []))]
    if "completion" in data:
        return [_text(data["completion"])]
    if "messages" in data:
        return [_text(data["messages"][-1:])]
    return []


def _text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    return "\n".join(str(m.get("content", "")) for m in messages)


def _prompt_key(row: Row) -> str:
    data = row.data
    messages = data.get("prompt") or data.get("messages", [])[:-1]
    return normalize(_text(messages) if messages else row.prompt_text)


def _shape(row: Row) -> tuple:
    """Rows of one shape can be duplicates: the same fields, and the same thumb if any."""
    return tuple(sorted(k for k in row.data if k != "weight")), row.data.get("label")


def _exact_key(row: Row) -> tuple:
    return _shape(row), _prompt_key(row), *map(normalize, _answers(row))


def _newest(rows: Sequence[Row], indices: Sequence[int]) -> int:
    return max(indices, key=lambda i: (rows[i].created_at, i))


def drop_duplicates(rows: Sequence[Row], near_threshold: float = 0.9) -> tuple[list[Row], StepReport]:
    """Exact duplicates (same normalised prompt and answers, same label or preference order),
    then near duplicates: prompts at least `near_threshold` similar (trigram Jaccard, grouped as
    the held-out split groups them) whose every answer is too. The newest of each cluster stays."""
    clusters: dict[tuple, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        clusters[_exact_key(row)].append(i)
    survivors = sorted(_newest(rows, members) for members in clusters.values())
    exact = len(rows) - len(survivors)

    groups = prompt_groups([_prompt_key(rows[i]) for i in survivors], near_threshold)
    by_group: dict[tuple, list[int]] = defaultdict(list)
    for group, i in zip(groups, survivors):
        by_group[(group, _shape(rows[i]))].append(i)
    keep: list[int] = []
    for members in by_group.values():
        keep.extend(_newest_per_near_cluster(rows, members, near_threshold))
    keep.sort()
    near = len(survivors) - len(keep)
    return [rows[i] for i in keep], StepReport("duplicates", exact + near, {"exact": exact, "near": near})


def _newest_per_near_cluster(rows: Sequence[Row], members: list[int], threshold: float) -> list[int]:
    shingles = [[trigrams(a) for a in _answers(rows[i])] for i in members]

    def near(x: int, y: int) -> bool:
        return all(jaccard(a, b) >= threshold for a, b in zip(shingles[x], shingles[y]))

    clusters: dict[int, list[int]] = defaultdict(list)
    for i, group in zip(members, linked_groups(len(members), near)):
        clusters[group].append(i)
    return [_newest(rows, c) for c in clusters.values()]


# --- personal data -----------------------------------------------------------------------------

def default_output_check(settings: Any = None) -> Any:
    """The built-in guardrails plugin's output check (the settings' file, else the bundled one)."""
    from plugins.guardrails.plugin import GuardrailsOutputCheck, shared_guards

    return GuardrailsOutputCheck(shared_guards(settings))


def default_redactor(settings: Any = None) -> Callable[[str], str]:
    """The built-in guardrails plugin's store redaction (the settings' file, else the bundled one):
    what every stored text already passed, applied again to what is trained on."""
    from plugins.guardrails.plugin import GuardrailsRedactor, shared_guards

    return GuardrailsRedactor(shared_guards(settings)).redact


def _as_text_check(check: Any) -> Callable[[str], str | None]:
    """A text -> text function; None means the text may not be kept at all.

    `check` is the plugin manager's `Plugins` (the same redaction every stored text passes,
    `PluginHooks.redact`; if it cannot run, the row is not kept: fail closed), one
    `OutputCheck`, or already a text -> text callable."""
    if hasattr(check, "redactors"):
        from feedback.redaction import RedactionUnavailable
        from plugins.turns import PluginHooks

        hooks = PluginHooks(check)

        def redact(text: str) -> str | None:
            try:
                return hooks.redact(text)
            except RedactionUnavailable:
                return None

        return redact
    if not hasattr(check, "check_output"):
        def run_callable(text: str) -> str | None:
            try:
                return check(text)
            except Exception:  # a check that cannot tell keeps nothing raw: the row goes
                return None

        return run_callable
    from plugins.protocols import TurnContext

    context = TurnContext(channel="trainer")

    def run(text: str) -> str | None:
        verdict = check.check_output(text, context)
        if verdict.action == "refuse":
            return None
        return verdict.text if verdict.action == "fix" and verdict.text is not None else text

    return run


class _Refused(Exception):
    pass


def scrub_personal_data(rows: Sequence[Row], check: Any = None) -> tuple[list[Row], StepReport]:
    """Every text (prompt messages, answers, `prompt_text`) through the store's redaction (the
    plugins', an `OutputCheck`, or a plain text -> text callable; default: the built-in guardrails').
    Rows rewritten are counted as changed; a row the check refuses outright is removed."""
    run = _as_text_check(check if check is not None else default_redactor())
    cache: dict[str, str | None] = {}

    def fix(text: str) -> str:
        if text not in cache:
            cache[text] = run(text)
        if cache[text] is None:
            raise _Refused
        return cache[text]

    kept, changed, refused = [], 0, 0
    for row in rows:
        try:
            data = _scrub_value(row.data, fix)
            new = replace(row, data=data, prompt_text=fix(row.prompt_text))
        except _Refused:
            refused += 1
            continue
        changed += data != row.data or new.prompt_text != row.prompt_text
        kept.append(new)
    return kept, StepReport("personal_data", refused, {"changed": changed, "refused": refused}, changed)


def _scrub_value(value: Any, fix: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fix(value)
    if isinstance(value, list):
        return [_scrub_value(v, fix) for v in value]
    if isinstance(value, dict):
        return {k: (_scrub_value(v, fix) if k in ("prompt", "chosen", "rejected", "completion", "messages", "content")
                    else v) for k, v in value.items()}
    return value


# --- per-user cap ------------------------------------------------------------------------------

def cap_per_user(rows: Sequence[Row], max_share: float) -> tuple[list[Row], StepReport]:
    """Drop the oldest rows of whoever is in more than `max_share` of the rows (a row with
    several users, such as a pair from two people's ratings, counts for each).

    The cap is one number of rows per person, fixed before anything is dropped: the largest
    count c such that c is at most `max_share` of what would be left if everyone kept at most
    c rows (water-filling). So dropping one person's excess never lowers the bar for the rest,
    and a small dataset loses only its heaviest users' excess, never everything. When the
    people are too few for anyone to be under `max_share` (three reviewers can't all be under
    20%; six people whose every row names two of them can't either), the cap is an even share.
    Deterministic: the user furthest over goes first (lowest id on ties), and among equally
    old rows the earliest listed.
    """
    counts: Counter[int] = Counter()
    oldest_first: dict[int, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        for user in set(row.user_ids):
            counts[user] += 1
            oldest_first[user].append(i)
    cap = _water_fill(counts, max_share, sum(counts.values()) / len(rows) if rows else 1.0)
    for indices in oldest_first.values():
        indices.sort(key=lambda i: (rows[i].created_at, i), reverse=True)  # pop() = oldest
    kept, dropped_by = [True] * len(rows), Counter()
    while counts:
        user, count = min(counts.items(), key=lambda uc: (-uc[1], uc[0]))
        if count <= cap:
            break
        i = oldest_first[user].pop()
        while not kept[i]:
            i = oldest_first[user].pop()
        kept[i] = False
        dropped_by[user] += 1
        for other in set(rows[i].user_ids):
            counts[other] -= 1
    out = [row for row, keep in zip(rows, kept) if keep]
    return out, StepReport("user_cap", len(rows) - len(out), {"by_user": dict(sorted(dropped_by.items())),
                                                               "cap": cap})


def _water_fill(counts: Counter[int], max_share: float, users_per_row: float) -> int:
    """The most rows one person may keep: the largest c with c <= share * rows kept at cap c."""
    if not counts:
        return 0
    share = max(max_share, users_per_row / len(counts))  # an even share when people are too few

    def rows_kept(cap: int) -> float:
        return sum(min(n, cap) for n in counts.values()) / users_per_row

    cap = 1
    while cap < max(counts.values()) and cap + 1 <= share * rows_kept(cap + 1) + 1e-9:
        cap += 1
    return cap


# --- agreement ---------------------------------------------------------------------------------

@dataclass
class Dispute:
    item: tuple  # ("comparison", pair) or ("thumb", response id)
    votes: dict[str, int]  # label -> how many people gave it
    majority_share: float


@dataclass
class KindAgreement:
    kind: str
    alpha: float | None  # Krippendorff's alpha, nominal; None with no shared items
    items: int  # items judged by two or more people
    raters: int
    kappa: float | None = None  # Cohen's kappa, when exactly two people judged every shared item


@dataclass
class AgreementResult:
    by_kind: dict[str, KindAgreement]
    disputes: list[Dispute]

    @property
    def alpha(self) -> float | None:
        """The lowest alpha over the kinds with shared items."""
        figures = [k.alpha for k in self.by_kind.values() if k.alpha is not None]
        return min(figures) if figures else None

    @property
    def items(self) -> int:
        return sum(k.items for k in self.by_kind.values())


def judgment(row: Row) -> tuple[tuple, str] | None:
    """(item, label) of a row that is one person's judgment of one item, else None.
    A/B choices: the item is the pair of responses, the label the one chosen; thumbs: the item
    is the response, the label up or down."""
    if row.source == "comparison" and len(row.response_ids) == 2 and len(row.user_ids) == 1:
        return ("comparison", tuple(sorted(map(str, row.response_ids)))), str(row.response_ids[0])
    if row.source == "thumb" and len(row.response_ids) == 1 and len(row.user_ids) == 1:
        return ("thumb", str(row.response_ids[0])), "up" if row.data.get("label") else "down"
    return None


def _votes(rows: Sequence[Row]) -> dict[tuple, dict[int, str]]:
    """item -> {user: label}, each person's newest judgment."""
    newest: dict[tuple, dict[int, tuple]] = defaultdict(dict)
    for i, row in enumerate(rows):
        found = judgment(row)
        if found is None:
            continue
        item, label = found
        user = row.user_ids[0]
        if user not in newest[item] or (row.created_at, i) >= newest[item][user][0]:
            newest[item][user] = ((row.created_at, i), label)
    return {item: {u: label for u, (_, label) in users.items()} for item, users in newest.items()}


def agreement(rows: Sequence[Row]) -> AgreementResult:
    """Where two or more people judged the same item: Krippendorff's alpha (nominal) per kind
    (A/B choices, thumbs), Cohen's kappa too for exactly two raters, and the disputed items
    (people gave different labels)."""
    shared = {item: users for item, users in _votes(rows).items() if len(users) >= 2}
    by_kind: dict[str, KindAgreement] = {}
    for kind in ("comparison", "thumb"):
        items = {item: users for item, users in shared.items() if item[0] == kind}
        if items:
            by_kind[kind] = _kind_agreement(kind, items)
    disputes = []
    for item, users in shared.items():
        votes = Counter(users.values())
        if len(votes) > 1:
            disputes.append(Dispute(item, dict(sorted(votes.items())), max(votes.values()) / len(users)))
    return AgreementResult(by_kind, disputes)


def _kind_agreement(kind: str, items: dict[tuple, dict[int, str]]) -> KindAgreement:
    import krippendorff
    import numpy as np
    from sklearn.metrics import cohen_kappa_score

    raters = sorted({u for users in items.values() for u in users})
    units = sorted(items)
    # Labels coded the same way across units: for a pair, which of its two (sorted) responses won.
    code = {item: ({item[1][0]: 0, item[1][1]: 1} if kind == "comparison" else {"down": 0, "up": 1}) for item in units}
    matrix = np.full((len(raters), len(units)), np.nan)
    for col, item in enumerate(units):
        for user, label in items[item].items():
            matrix[raters.index(user), col] = code[item][label]
    values = matrix[~np.isnan(matrix)]
    if len(set(values.tolist())) == 1:
        alpha = 1.0  # everyone gave the same label everywhere: no disagreement at all
    else:
        alpha = float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal"))
    kappa = None
    if len(raters) == 2 and not np.isnan(matrix).any():
        kappa = 1.0 if len(set(values.tolist())) == 1 else float(cohen_kappa_score(matrix[0], matrix[1]))
    return KindAgreement(kind, alpha, len(units), len(raters), kappa)


def check_agreement_floor(alpha: float | None, floor: float, items: int, min_items: int = 20,
                          kind: str = "judgments") -> None:
    """Raise `CurationBlocked` when agreement is under `floor` on at least `min_items` shared
    items (fewer items are too few to judge, and pass)."""
    if alpha is None or items < min_items or alpha >= floor:
        return
    raise CurationBlocked(
        f"Training blocked: reviewers agree too little on {kind}. Krippendorff's alpha is {alpha:.3f}, "
        f"under the floor of {floor:.3f}, over {items} items judged by two or more people "
        f"(at least {min_items} are needed to judge). Review the disputed items and the rating "
        f"guidelines, or lower the floor (CurationConfig.agreement_floor) if this is expected.")


def resolve_disputes(rows: Sequence[Row], mode: DisputeMode = "drop",
                     result: AgreementResult | None = None) -> tuple[list[Row], StepReport]:
    """Disputed items' rows dropped, or down-weighted: each such row gets `data["weight"]`, the
    share of people who gave its label (2 of 3 agree: their rows 2/3, the other row 1/3).
    In down-weight mode every row gets a weight (1.0 where undisputed) so the column is whole."""
    if mode not in ("drop", "downweight"):
        raise ValueError(f"dispute mode must be 'drop' or 'downweight', not {mode!r}")
    result = result if result is not None else agreement(rows)
    disputed = {d.item: d for d in result.disputes}
    kept: list[Row] = []
    changed = 0
    for row in rows:
        found = judgment(row)
        dispute = disputed.get(found[0]) if found else None
        if dispute is None:
            kept.append(replace(row, data={**row.data, "weight": row.data.get("weight", 1.0)})
                        if mode == "downweight" else row)
        elif mode == "downweight":
            weight = dispute.votes[found[1]] / sum(dispute.votes.values())
            kept.append(replace(row, data={**row.data, "weight": weight}))
            changed += 1
    return kept, StepReport("disputes", len(rows) - len(kept), {"mode": mode, "items": len(disputed)}, changed)


# --- replay and golden set ---------------------------------------------------------------------

def add_replay(rows: Sequence[Row], earlier_rows: Sequence[Row], share: float,
               seed: int = 0) -> tuple[list[Row], StepReport]:
    """Append earlier rows so they make up `share` of the result: round(share / (1 - share) * n),
    drawn reproducibly with `seed`, skipping exact copies of current rows. Fewer when there are
    not enough earlier rows (noted)."""
    if not 0 <= share < 1:
        raise ValueError(f"replay share must be in [0, 1), not {share}")
    current = {_exact_key(r) for r in rows}
    pool = [r for r in earlier_rows if _exact_key(r) not in current]
    wanted = round(share / (1 - share) * len(rows))
    picked = sorted(random.Random(seed).sample(range(len(pool)), min(wanted, len(pool))))
    added = [pool[i] for i in picked]
    notes = {"added": len(added), "wanted": wanted, "available": len(pool)}
    return [*rows, *added], StepReport("replay", 0, notes, len(added))


@dataclass(frozen=True)
class GoldenItem:
    prompt: str
    answer: str


def golden_set(path: Path | str | None = None) -> list[GoldenItem]:
    """Reference prompt/answer pairs from a JSONL file ({"prompt", "answer"} a line; default: the
    bundled set). For evaluation only: `assert_no_golden` keeps them out of training."""
    items = []
    with Path(path or GOLDEN_PATH).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                record = json.loads(line)
                if not (isinstance(record.get("prompt"), str) and isinstance(record.get("answer"), str)):
                    raise ValueError(f"{path or GOLDEN_PATH}:{number}: needs string 'prompt' and 'answer'")
                items.append(GoldenItem(record["prompt"], record["answer"]))
    return items


def assert_no_golden(rows: Sequence[Row], golden: Sequence[GoldenItem]) -> None:
    """Raise `GoldenLeak` if any golden prompt is a user message in any training row."""
    leaks = [prompt for row in rows for prompt in _golden_prompts_in(row, golden)]
    if leaks:
        shown = "; ".join(sorted(set(leaks))[:5])
        raise GoldenLeak(f"{len(leaks)} training row(s) contain golden-set prompts, which are for evaluation "
                         f"only: {shown}. Remove them from the training data or from the golden set.")


def _golden_prompts_in(row: Row, golden: Sequence[GoldenItem]) -> list[str]:
    prompts = {normalize(item.prompt): item.prompt for item in golden}
    messages = row.data.get("prompt") or row.data.get("messages") or []
    texts = {row.prompt_text, *(m.get("content", "") for m in messages if m.get("role") == "user")}
    return [prompts[normalize(t)] for t in texts if normalize(t) in prompts]


def drop_golden(rows: Sequence[Row], golden: Sequence[GoldenItem]) -> tuple[list[Row], StepReport]:
    """Rows that ask a golden prompt are removed: users do ask "What is the capital of France?",
    and that must neither block the night's run nor let the golden set be trained on."""
    kept = [row for row in rows if not _golden_prompts_in(row, golden)]
    return kept, StepReport("golden", len(rows) - len(kept))


# --- all together ------------------------------------------------------------------------------

def curate(rows: Sequence[Row], config: CurationConfig | None = None, earlier_rows: Sequence[Row] = (),
           check: Any = None) -> tuple[list[Row], CurationReport]:
    """The steps in order (see the module docstring); raises `CurationBlocked` when agreement
    is under the floor on enough shared items. Rows asking a golden prompt are dropped and counted."""
    config = config or CurationConfig()
    report = CurationReport(rows_in=len(rows))
    current = list(rows)

    def step(result: tuple[list[Row], StepReport]) -> None:
        nonlocal current
        current, step_report = result
        report.steps.append(step_report)

    if config.scrub:
        step(scrub_personal_data(current, check))
    report.agreement = agreement(current)
    for kind in report.agreement.by_kind.values():
        check_agreement_floor(kind.alpha, config.agreement_floor, kind.items, config.min_shared_items, kind.kind)
    step(resolve_disputes(current, config.dispute_mode, report.agreement))
    step(drop_duplicates(current, config.near_threshold))
    step(cap_per_user(current, config.max_user_share))
    golden = golden_set(config.golden_path)
    step(drop_golden(current, golden))
    if config.replay_share:
        step(add_replay(current, earlier_rows, config.replay_share, config.seed))
        kept, golden_report = drop_golden(current, golden)
        step((kept, replace(golden_report, name="golden_in_replay")))
    report.rows_out = len(current)
    return current, report
