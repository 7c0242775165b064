"""Curation steps on crafted rows: what each removes or changes, agreement on a case computed
by hand, the floor's block message, replay share, the golden-set guard, and scrubbing with the
real guardrails plugin."""

from __future__ import annotations

import random
from collections import Counter
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from feedback.export import Row
from trainer.curation import (
    CurationBlocked,
    CurationConfig,
    GoldenLeak,
    add_replay,
    agreement,
    assert_no_golden,
    cap_per_user,
    check_agreement_floor,
    curate,
    default_output_check,
    drop_duplicates,
    golden_set,
    resolve_disputes,
    scrub_personal_data,
)
from trainer.datasets import jaccard, normalize, split_rows, trigrams

BASE = datetime(2026, 11, 1, tzinfo=UTC)


def rid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def pair(prompt: str, chosen: str, rejected: str, user: int = 1, day: float = 0,
         ids: tuple[int, int] | None = None) -> Row:
    ids = ids or (random.getrandbits(64), random.getrandbits(64))
    data = {"prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}
    return Row(data, "comparison", prompt, BASE + timedelta(days=day), [user], [rid(ids[0]), rid(ids[1])])


def thumb(prompt: str, answer: str, up: bool, user: int = 1, day: float = 0, response: int | None = None) -> Row:
    data = {"prompt": [{"role": "user", "content": prompt}],
            "completion": [{"role": "assistant", "content": answer}], "label": up}
    response = random.getrandbits(64) if response is None else response
    return Row(data, "thumb", prompt, BASE + timedelta(days=day), [user], [rid(response)])


def no_scrub(text: str) -> str:
    return text


# --- duplicates ----------------------------------------------------------------------------------

def test_exact_duplicates_are_removed_keeping_the_newest():
    older = pair("How do I boil an egg?", "Seven minutes in boiling water.", "Fry it.", day=1)
    newer = pair("how do I boil an EGG", "Seven minutes in boiling water!", "fry it", user=2, day=3)
    other = pair("What is a monad?", "A monoid in the category of endofunctors.", "A fruit.", day=2)
    kept, report = drop_duplicates([older, other, newer], near_threshold=0.8)
    assert kept == [other, newer]
    assert (report.name, report.removed, report.notes) == ("duplicates", 1, {"exact": 1, "near": 0})


def test_near_duplicates_keep_the_newest_and_different_answers_or_order_stay():
    a = pair("How do I boil an egg?", "Put the egg in boiling water for seven minutes.", "Fry it in oil.", day=5)
    near_old = pair("How do I boil an eggs?", "Put the egg in boiling water for seven minutes please.",
                    "Fry it in oil.", day=1)
    near_new = pair("How do I boil an egg??", "Put the eggs in boiling water for seven minutes.",
                    "Fry it in oil!!", day=9)
    other_answer = pair("How do I boil an egg?", "Ask a chef.", "Microwave it whole.", day=2)
    swapped = pair("How do I boil an egg?", "Fry it in oil.", "Put the egg in boiling water for seven minutes.",
                   day=3)
    # The near copies really are near, and the swapped pair's answers are not (chosen against chosen).
    assert jaccard(trigrams(a.prompt_text), trigrams(near_old.prompt_text)) >= 0.8
    assert jaccard(trigrams("Fry it in oil."), trigrams("Put the egg in boiling water for seven minutes.")) < 0.8
    kept, report = drop_duplicates([a, near_old, other_answer, near_new, swapped], near_threshold=0.8)
    assert kept == [other_answer, near_new, swapped]
    assert report.removed == 2 and report.notes == {"exact": 0, "near": 2}


def test_opposite_thumbs_on_the_same_answer_are_not_duplicates():
    up = thumb("Capital of Peru?", "Lima.", True, user=1, response=7)
    down = thumb("Capital of Peru?", "Lima.", False, user=2, response=7)
    again = thumb("Capital of Peru?", "Lima.", True, user=3, day=1, response=7)
    kept, report = drop_duplicates([up, down, again], near_threshold=0.8)
    assert kept == [down, again] and report.removed == 1


# --- personal data -------------------------------------------------------------------------------

def test_scrubbing_counts_rows_changed_and_leaves_the_input_alone():
    rows = [thumb("Mail bob@x.org", "Done, bob@x.org.", True), thumb("Hello", "Hi!", True)]
    kept, report = scrub_personal_data(rows, lambda t: t.replace("bob@x.org", "[email]"))
    assert (report.removed, report.changed) == (0, 1)
    assert kept[0].prompt_text == "Mail [email]"
    assert kept[0].data["prompt"][0]["content"] == "Mail [email]"
    assert kept[0].data["completion"][0]["content"] == "Done, [email]."
    assert kept[1] == rows[1]
    assert rows[0].prompt_text == "Mail bob@x.org"  # a copy was changed, not the caller's row


def test_a_row_the_check_refuses_is_removed():
    from plugins.protocols import Verdict

    class Check:
        name, fail_closed = "stub.output", False

        def check_output(self, text, context):
            return Verdict("refuse", "Sorry.") if "secret plan" in text else Verdict.passed()

    rows = [thumb("Hi", "The secret plan is...", True), thumb("Hi", "Hello!", True)]
    kept, report = scrub_personal_data(rows, Check())
    assert kept == rows[1:]
    assert (report.removed, report.changed, report.notes) == (1, 0, {"changed": 0, "refused": 1})


def test_the_real_guardrails_plugin_redacts_a_card_number_and_an_email():
    row = pair("My card is 4111 1111 1111 1111, send the receipt to jane@corp.com",
               "I've noted card 4111 1111 1111 1111 and will email jane@corp.com.", "No.", user=4)
    kept, report = scrub_personal_data([row], default_output_check())
    assert (report.removed, report.changed) == (0, 1)
    assert kept[0].prompt_text == "My card is [card], send the receipt to [email]"
    assert kept[0].data["prompt"][0]["content"] == kept[0].prompt_text
    assert kept[0].data["chosen"][0]["content"] == "I've noted card [card] and will email [email]."
    assert kept[0].data["rejected"][0]["content"] == "No."
    assert (kept[0].user_ids, kept[0].response_ids, kept[0].created_at) == (row.user_ids, row.response_ids,
                                                                             row.created_at)


# --- per-user cap --------------------------------------------------------------------------------

def test_no_user_is_over_the_cap_and_the_heavy_users_oldest_rows_go():
    heavy = [thumb(f"q{i}", "a", True, user=1, day=i) for i in range(10)]
    others = [thumb(f"r{u}{i}", "a", True, user=u, day=i) for u, n in ((2, 3), (3, 3), (4, 2)) for i in range(n)]
    rows = heavy + others
    kept, report = cap_per_user(rows, max_share=0.3)
    # 10 - k rows of user 1 out of 18 - k must be at most 30%: k = 7 is the least that fits (3 of 11).
    assert report.removed == 7 and report.notes == {"by_user": {1: 7}, "cap": 3}
    assert [r for r in kept if r.user_ids == [1]] == heavy[7:]
    assert all(r in kept for r in others)
    for user in (1, 2, 3, 4):
        assert sum(user in r.user_ids for r in kept) <= 0.3 * len(kept)
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    assert {id(r) for r in cap_per_user(shuffled, 0.3)[0]} == {id(r) for r in kept}


def test_with_few_people_the_cap_is_an_even_share_not_everything():
    # Three people can't each be under 20%: the cap becomes a third, and only the excess goes.
    even = [thumb(f"q{u}{i}", "a", True, user=u, day=i) for u in (1, 2, 3) for i in range(3)]
    kept, report = cap_per_user(even, max_share=0.2)
    assert kept == even and report.removed == 0
    uneven = even + [thumb(f"extra{i}", "a", True, user=1, day=10 + i) for i in range(3)]
    kept, report = cap_per_user(uneven, max_share=0.2)
    assert report.notes == {"by_user": {1: 3}, "cap": 3} and sum(r.user_ids == [1] for r in kept) == 3


def test_a_small_night_of_two_person_pairs_keeps_most_of_its_rows():
    # 14 pairs from rating gaps, each naming the two people whose ratings differ, among 6 people:
    # nobody can be under 20% when every row counts twice, so the cap is an even share (a third),
    # fixed up front; dropping one person's excess never lowers the bar for the others.
    people = [(1, 2), (3, 4), (5, 6), (1, 3), (2, 4), (5, 1), (6, 2), (3, 5), (4, 6), (1, 4), (2, 5), (3, 6),
              (1, 6), (2, 3)]
    rows = []
    for day, users in enumerate(people):
        row = pair(f"question {day}", "good", "bad", day=day)
        rows.append(replace(row, user_ids=list(users)))
    kept, report = cap_per_user(rows, max_share=0.2)
    assert report.notes["cap"] == 4 and len(kept) == 11  # four people had 5 mentions: one row each went
    mentions = Counter(user for row in kept for user in row.user_ids)
    assert max(mentions.values()) <= 4


# --- agreement -----------------------------------------------------------------------------------

def two_raters() -> list[Row]:
    # Six answers, each thumbed by users 1 and 2; they differ only on answer 3.
    u1 = [True, True, True, False, False, True]
    u2 = [True, True, False, False, False, True]
    return [thumb(f"q{n}", f"a{n}", label, user=user, response=n)
            for user, labels in ((1, u1), (2, u2)) for n, label in enumerate(labels)]


def test_agreement_on_a_case_computed_by_hand():
    result = agreement(two_raters())
    thumbs = result.by_kind["thumb"]
    assert (thumbs.items, thumbs.raters) == (6, 2)
    # Krippendorff's alpha, nominal: 12 pairable values, 7 "up" and 5 "down"; the coincidence
    # matrix has o(up,down) = o(down,up) = 1 (answer 3). Do = 2/12; De = 2*7*5 / (12*11) = 70/132;
    # alpha = 1 - Do/De = 1 - 264/840 = 24/35.
    assert thumbs.alpha == pytest.approx(float(Fraction(24, 35)))
    # Cohen's kappa: po = 5/6; user 1 says up 4/6, user 2 3/6: pe = 4/6*3/6 + 2/6*3/6 = 1/2;
    # kappa = (5/6 - 1/2) / (1 - 1/2) = 2/3.
    assert thumbs.kappa == pytest.approx(2 / 3)
    assert result.alpha == thumbs.alpha
    assert [(d.item, d.votes, d.majority_share) for d in result.disputes] == [
        (("thumb", str(rid(2))), {"down": 1, "up": 1}, 0.5)]


def test_pairs_count_as_one_item_whichever_way_they_were_stored():
    rows = [pair("p", "x", "y", user=1, ids=(1, 2)), pair("p", "x", "y", user=2, ids=(1, 2)),
            pair("p", "y", "x", user=3, ids=(2, 1))]
    result = agreement(rows)
    assert result.by_kind["comparison"].items == 1 and result.by_kind["comparison"].raters == 3
    assert result.disputes[0].votes == {str(rid(1)): 2, str(rid(2)): 1}
    assert result.disputes[0].majority_share == pytest.approx(2 / 3)


def disagreeing(n: int) -> list[Row]:
    """Two users who thumb n answers opposite ways."""
    return [thumb(f"q{i}", f"a{i}", (i % 2 == 0) == (user == 1), user=user, response=i)
            for user in (1, 2) for i in range(n)]


def test_agreement_under_the_floor_blocks_with_a_clear_message():
    result = agreement(disagreeing(4))
    alpha = result.by_kind["thumb"].alpha
    assert alpha < 0
    with pytest.raises(CurationBlocked) as blocked:
        check_agreement_floor(alpha, floor=0.4, items=4, min_items=4, kind="thumbs")
    message = str(blocked.value)
    assert f"{alpha:.3f}" in message and "0.400" in message and "4 items" in message
    assert "thumbs" in message and "disputed items" in message and "agreement_floor" in message
    # Too few shared items to judge, or agreement at the floor: no block.
    check_agreement_floor(alpha, floor=0.4, items=3, min_items=4)
    check_agreement_floor(0.4, floor=0.4, items=100, min_items=4)
    check_agreement_floor(None, floor=0.4, items=0)


def test_curate_blocks_under_the_floor():
    config = CurationConfig(agreement_floor=0.4, min_shared_items=4)
    with pytest.raises(CurationBlocked, match="under the floor of 0.400"):
        curate(disagreeing(4), config, check=no_scrub)
    curate(disagreeing(4), CurationConfig(agreement_floor=0.4, min_shared_items=5), check=no_scrub)


def dispute_rows() -> list[Row]:
    return [pair("p", "x", "y", user=1, ids=(1, 2)), pair("p", "x", "y", user=2, ids=(1, 2)),
            pair("p", "y", "x", user=3, ids=(2, 1)),  # 2 to 1 for x: disputed
            pair("q", "u", "v", user=1, ids=(3, 4)), pair("q", "u", "v", user=2, ids=(3, 4)),  # agreed
            Row({"messages": []}, "correction", "r", BASE, [5], [rid(9)])]  # not a shared judgment


def test_disputed_items_are_dropped():
    rows = dispute_rows()
    kept, report = resolve_disputes(rows, "drop")
    assert kept == rows[3:]
    assert (report.removed, report.notes) == (3, {"mode": "drop", "items": 1})


def test_disputed_items_are_down_weighted_by_the_share_that_agrees():
    rows = dispute_rows()
    kept, report = resolve_disputes(rows, "downweight")
    assert (report.removed, report.changed) == (0, 3)
    assert [r.data["weight"] for r in kept] == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1.0, 1.0, 1.0])
    assert "weight" not in rows[0].data
    with pytest.raises(ValueError):
        resolve_disputes(rows, "ignore")


# --- replay and golden set -----------------------------------------------------------------------

def test_replay_makes_up_exactly_the_share_asked():
    rows = [thumb(f"new {i}", "a", True, user=i) for i in range(80)]
    earlier = [thumb(f"old {i}", "a", True, user=i) for i in range(50)]
    out, report = add_replay(rows, earlier, share=0.2, seed=1)
    added = out[80:]
    assert out[:80] == rows and len(added) == 20 and len(added) / len(out) == 0.2
    assert all(r in earlier for r in added) and len({id(r) for r in added}) == 20
    assert report.notes == {"added": 20, "wanted": 20, "available": 50}
    assert add_replay(rows, earlier, 0.2, seed=1)[0] == out  # reproducible
    assert add_replay(rows, earlier, 0.2, seed=2)[0] != out
    few, short = add_replay(rows, earlier[:5], 0.2, seed=1)
    assert len(few) == 85 and short.notes == {"added": 5, "wanted": 20, "available": 5}
    assert add_replay(rows, earlier, 0.0)[0] == rows


def test_the_bundled_golden_set_loads():
    golden = golden_set()
    assert 10 <= len(golden) <= 20
    assert all(item.prompt.strip() and item.answer.strip() for item in golden)


def test_golden_prompts_never_reach_training(tmp_path):
    golden = golden_set()
    rows = [thumb("Tell me a joke", "No.", False)]
    assert_no_golden(rows, golden)
    leaked = rows + [pair(golden[0].prompt.upper(), "x", "y")]
    with pytest.raises(GoldenLeak, match="evaluation only"):
        assert_no_golden(leaked, golden)
    out, report = curate(leaked, CurationConfig(max_user_share=1.0), check=no_scrub)
    assert out == rows and report.removed()["golden"] == 1
    # Through replay too.
    config = CurationConfig(max_user_share=1.0, replay_share=0.5)
    out, _ = curate(rows, config, earlier_rows=[thumb(golden[1].prompt, "a", True)], check=no_scrub)
    assert out == rows
    # A golden set of one's own.
    path = tmp_path / "golden.jsonl"
    path.write_text('{"prompt": "Tell me a joke", "answer": "Knock knock."}\n')
    out, report = curate(rows, CurationConfig(max_user_share=1.0, golden_path=path), check=no_scrub)
    assert out == [] and report.removed()["golden"] == 1


# --- all together --------------------------------------------------------------------------------

def test_curate_counts_what_each_step_removed_and_the_split_does_not_leak():
    topics = ["boil an egg", "plant tomatoes", "fix a leaking tap", "learn spanish verbs", "bake bread",
              "tie a tie", "change a tyre", "write a haiku"]
    rows = []
    for day, topic in enumerate(topics):
        for variant, user in ((f"How do I {topic}?", 10 + day), (f"how do i {topic}", 20 + day),
                              (f"How do I {topic}s?", 30 + day)):
            rows.append(pair(variant, f"Here is how to {topic}.", "No idea.", user=user, day=day, ids=(day, 100 + day)))
    answers = ["Sure.", "Done, bob@x.org.", "Noted, I will write.", "Okay then, expect mail soon."]
    rows += [thumb("Email me at bob@x.org", answer, True, user=1, day=i, response=500 + i)
             for i, answer in enumerate(answers)]  # one user, four different answers
    earlier = [thumb(f"old question {i}", "old answer", True, user=99) for i in range(10)]
    config = CurationConfig(near_threshold=0.8, max_user_share=0.125, replay_share=0.25, min_shared_items=100)
    out, report = curate(rows, config, earlier_rows=earlier,
                         check=lambda t: t.replace("bob@x.org", "[email]"))
    # 8 topics asked 3 ways by 3 people agreeing: exact (2 ways normalise alike) then near copies.
    # Then 12 rows, 4 of them user 1's: 3 go (1 of 9 is under 1/8; 2 of 10 is not).
    assert report.removed() == {"personal_data": 0, "disputes": 0, "duplicates": 16, "user_cap": 3,
                                "golden": 0, "replay": 0, "golden_in_replay": 0}
    assert report.steps[0].changed == 4
    assert report.steps[2].notes == {"exact": 8, "near": 8}
    assert report.agreement.by_kind["comparison"].alpha == 1.0
    assert report.rows_in == 28 and report.rows_out == len(out) == 12  # 9 + 3 replayed
    assert sum(r.user_ids == [1] for r in out) == 1 and "[email]" in out[8].prompt_text
    assert report.lines()[0] == "rows in: 28" and report.lines()[-1] == "rows out: 12"
    split = split_rows(out, holdout_fraction=0.25, threshold=0.8)
    assert split.train and split.held_out
    for held in split.held_out:
        for trained in split.train:
            assert jaccard(trigrams(held.prompt_text), trigrams(trained.prompt_text)) < 0.8
            assert normalize(held.prompt_text) != normalize(trained.prompt_text)


def test_down_weighted_rows_train_in_proportion_to_their_weight():
    from trainer.data import weighted

    rows = [thumb(f"sure {i}", "a", True, user=i) for i in range(50)]
    disputed = [replace(thumb(f"disputed {i}", "a", True, user=i), data={"weight": 0.25}) for i in range(400)]
    kept = weighted(rows + disputed, seed=1)
    assert all(row in kept for row in rows)  # weight 1: always trained on
    assert 70 <= sum(row in kept for row in disputed) <= 130  # about a quarter of 400
    assert kept == weighted(rows + disputed, seed=1)  # reproducible
