"""Agreement between people who judged the same item (Krippendorff's alpha), and their disputes."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from feedback.export import Row
from trainer.curation.base import CurationBlocked, DisputeMode, StepReport


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
