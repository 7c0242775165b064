"""The nightly trainer's evaluation, gate and report: each gate threshold, golden-set scores
against torchmetrics/sacrebleu (and a ROUGE-L computed by hand), KL between real LoRA adapters
on the tiny model, length drift, guardrail violations (crafted and the real plugin), topics,
`evaluate_release` end to end, and the HTML report from full and sparse bodies."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from plugins.protocols import Verdict
from tests.judges import shorter
from trainer import report
from trainer.curation import GoldenItem, default_output_check
from trainer.evaluate import (
    CANDIDATE,
    Evaluation,
    evaluate_release,
    golden_regression,
    judge_answers,
    kl_to_active,
    length_drift,
    text_scores,
    topic_breakdown,
    violation_rates,
)
from trainer.gate import GateThresholds, check

SYSTEM = "You are a helpful, concise assistant."
PASSING = {"pair_accuracy": 0.7, "reward_pair_accuracy": 0.8, "win_rate": 0.6, "win_rate_low": 0.52, "golden_drop": 0.01,
           "violation_increase": 0.0, "length_drift": 0.1, "kl": 0.2}


def chat(text: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


# --- gate ----------------------------------------------------------------------------------------


def test_the_gate_passes_when_every_figure_is_within_its_threshold():
    result = check(GateThresholds(), PASSING)
    assert result["passed"] and len(result["checks"]) == 7 and all(c["passed"] for c in result["checks"])
    assert result["summary"].startswith("Gate passed: held-out pair accuracy 0.700 ≥ 0.55;")
    assert "\n" not in result["summary"] and "KL to the active release (nats/token) 0.200 ≤ 1" in result["summary"]


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("pair_accuracy", 0.5, "held-out pair accuracy 0.500 is below 0.55"),
    ("win_rate_low", 0.4, "win rate against the active release (95% lower bound) 0.400 is below 0.5"),
    ("reward_pair_accuracy", 0.52, "reward model held-out pair accuracy 0.520 is below 0.55"),
    ("golden_drop", 0.08, "golden-set ROUGE-L drop 0.080 is above 0.05"),
    ("violation_increase", 0.05, "guardrail violation increase 0.050 is above 0.02"),
    ("length_drift", 0.7, "answer length drift 0.700 is beyond ±0.5"),
    ("length_drift", -0.6, "answer length drift -0.600 is beyond ±0.5"),  # shorter counts as much as longer
    ("kl", 1.5, "KL to the active release (nats/token) 1.500 is above 1"),
])
def test_each_threshold_fails_the_gate_and_the_summary_names_it(key, value, expected):
    result = check(GateThresholds(), {**PASSING, key: value})
    assert not result["passed"]
    assert result["summary"] == f"Gate failed: {expected}"
    assert [c["key"] for c in result["checks"] if not c["passed"]] == [key.removesuffix("_low")]


def test_a_figure_on_its_threshold_passes_and_several_failures_are_all_named():
    edge = {**PASSING, "win_rate_low": 0.5, "golden_drop": 0.05, "length_drift": -0.5, "kl": 1.0}
    assert check(GateThresholds(), edge)["passed"]
    result = check(GateThresholds(max_kl=0.1, min_win_rate=0.65), PASSING)
    assert result["summary"] == ("Gate failed: win rate against the active release (95% lower bound) 0.520 is below "
                                 "0.65; KL to the active release (nats/token) 0.200 is above 0.1")


def test_the_win_rate_is_judged_by_its_lower_bound_unless_asked_otherwise():
    # 0.6 of ties and wins, but an interval reaching down to 0.45: not clearly better.
    unsure = {**PASSING, "win_rate": 0.6, "win_rate_low": 0.45}
    assert not check(GateThresholds(), unsure)["passed"]
    assert check(GateThresholds(win_rate_bound="point"), unsure)["passed"]


def test_unmeasured_figures_do_not_block_and_are_reported():
    result = check(GateThresholds(), {"win_rate": 0.6, "win_rate_low": 0.55, "kl": None})
    assert result["passed"]
    assert result["summary"].startswith("Gate passed: win rate against the active release (95% lower bound) "
                                        "0.550 ≥ 0.5 (not measured: ")
    assert "golden-set ROUGE-L drop" in result["summary"]
    assert [c["measured"] for c in result["checks"]].count(True) == 1


def test_a_required_figure_that_was_not_measured_fails_the_gate_and_says_which():
    result = check(GateThresholds(), {"pair_accuracy": 0.9, "kl": 0.1})
    assert not result["passed"]
    assert result["summary"] == ("Gate failed: win rate against the active release (95% lower bound) could not be "
                                 "measured and is required")
    assert check(GateThresholds(), {})["summary"].startswith("Gate failed:")
    assert check(GateThresholds(required=()), {})["summary"] == "Gate passed: nothing could be measured"


def test_an_open_gate_passes_any_figure():
    awful = {"pair_accuracy": 0.0, "reward_pair_accuracy": 0.1, "win_rate": 0.0, "golden_drop": 0.9,
             "violation_increase": 1.0, "length_drift": -0.99, "kl": 40.0}
    assert check(GateThresholds.open(), awful)["passed"]
    assert not check(GateThresholds(0.0, 0.0), awful)["passed"]  # the first two alone open only their checks


def test_the_first_two_thresholds_are_pair_accuracy_then_win_rate():
    assert GateThresholds(0.0, 0.0).min_win_rate == 0.0
    result = check(GateThresholds(0.0, 1.01), {"pair_accuracy": 0.8, "win_rate": 0.9})
    assert result["summary"].startswith("Gate failed: win rate against the active release (95% lower bound) 0.900 "
                                        "is below 1.01")


def test_settings_reach_the_thresholds(tiny_model):
    from pydantic import ValidationError

    from tuneloop.jobs import training_environment
    from tuneloop.settings import Settings

    settings = Settings(_env_file=None, model=str(tiny_model), gate_max_kl=0.3, gate_max_golden_drop=0.1,
                        gate_min_reward_pair_accuracy=0.6, gate_max_violation_increase=0.0, gate_max_length_drift=0.25)
    gate = training_environment(settings).gate
    assert (gate.max_kl, gate.max_golden_drop, gate.min_reward_pair_accuracy) == (0.3, 0.1, 0.6)
    assert (gate.max_violation_increase, gate.max_length_drift, gate.min_pair_accuracy) == (0.0, 0.25, 0.55)
    with pytest.raises(ValidationError, match="gate_max_kl"):
        Settings(_env_file=None, gate_max_kl=-0.1)
    with pytest.raises(ValidationError, match="gate_max_golden_drop"):
        Settings(_env_file=None, gate_max_golden_drop=1.5)


# --- golden set, length, violations ----------------------------------------------------------------


def test_golden_scores_follow_rouge_l_by_hand_and_sacrebleu():
    import sacrebleu

    references = ["the cat sat on the mat", "Paris is the capital of France."]
    good = ["the cat on the mat", "Paris is the capital of France."]
    worse = ["a dog", "I do not know."]
    scores = text_scores(good, references)
    # LCS of 5 tokens: precision 5/5, recall 5/6, F = 10/11; the second answer is exact.
    assert scores["rouge_l"] == pytest.approx((10 / 11 + 1.0) / 2)
    # Corpus BLEU pools n-gram counts over the set; it is not the mean of sentence scores.
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(good, [references]).score)
    assert scores["bleu"] != pytest.approx(sum(sacrebleu.sentence_bleu(g, [r]).score
                                               for g, r in zip(good, references)) / 2)

    same = golden_regression(good, good, references)
    assert (same["n"], same["rouge_l_drop"], same["bleu_drop"]) == (2, 0.0, 0.0)
    regressed = golden_regression(worse, good, references)
    assert regressed["rouge_l_drop"] == pytest.approx(scores["rouge_l"] - regressed["candidate"]["rouge_l"])
    assert regressed["rouge_l_drop"] > 0.5 and regressed["bleu_drop"] > 10
    assert golden_regression(good, worse, references)["rouge_l_drop"] < 0
    assert golden_regression([], [], [])["rouge_l_drop"] is None


def test_length_drift_is_candidate_over_active_minus_one():
    assert length_drift(["one two three four", "five six"], ["one two", "three"]) == {
        "candidate_words": 3.0, "active_words": 1.5, "drift": 1.0}
    assert length_drift(["one"], ["one two three four"])["drift"] == pytest.approx(-0.75)
    assert length_drift(["words"], [""])["drift"] is None  # nothing to compare with
    assert length_drift([""], [""])["drift"] == 0.0


class CardCheck:
    """An output check as plugins register one: refuses secrets, redacts cards, flags doubt."""

    name, fail_closed = "test.cards", False

    def check_output(self, text, context):
        if "secret" in text:
            return Verdict("refuse", "Sorry.", ["secret"])
        if "4111" in text:
            return Verdict("fix", text.replace("4111", "[card]"), ["card"])
        if "maybe" in text:
            return Verdict("flag", None, ["doubt"])
        return Verdict.passed()


def test_violation_rate_counts_refused_fixed_and_flagged_answers():
    candidate = ["the secret is out", "card 4111", "maybe", "fine", "fine too"]
    active = ["fine", "fine", "fine", "card 4111", "fine"]
    result = violation_rates(candidate, active, CardCheck())
    assert result == {"n": 5, "candidate": 0.6, "active": 0.2, "increase": pytest.approx(0.4),
                      "candidate_count": 3, "active_count": 1}
    # A plain callable from plugins: a Verdict, or a text check in curation's shape (None = refused).
    assert violation_rates(candidate, active, lambda t: CardCheck().check_output(t, None))["candidate_count"] == 3
    text_check = lambda t: None if "secret" in t else t.replace("4111", "[card]")
    assert violation_rates(candidate, active, text_check)["candidate_count"] == 2  # flags are invisible to it
    assert violation_rates(candidate, active, None) is None  # "not measured"


def test_violations_through_the_real_guardrails_plugin():
    candidate = ["Your card 4111 1111 1111 1111 is noted.", "Write to jane@corp.com", "Hello!"]
    result = violation_rates(candidate, ["Hello!", "Hi.", "Hello!"], default_output_check())
    assert (result["candidate_count"], result["active_count"]) == (2, 0)  # both redacted (fixed)


def test_a_check_that_raises_is_logged_not_counted_unless_it_fails_closed():
    class Broken:
        name, fail_closed = "test.broken", False

        def check_output(self, text, context):
            raise RuntimeError("down")

    assert violation_rates(["a", "b"], ["a", "b"], Broken())["candidate_count"] == 0
    Broken.fail_closed = True  # the chat path would refuse the turn, so it counts as refused
    assert violation_rates(["a", "b"], ["a", "b"], Broken())["candidate_count"] == 2


# --- judges and topics --------------------------------------------------------------------------------


def test_win_rate_counts_from_the_candidates_side_whatever_the_order_shown():
    prompts, ours, theirs = ["p1", "p2", "p3", "p4"], ["short", "longer one", "x", "same"], ["longer", "s", "yy", "same"]
    rate, outcomes = judge_answers(prompts, ours, theirs, shorter, "shorter", seed=3)
    assert outcomes == ["win", "loss", "win", "win"]  # "same" vs "same": shorter says "a", i.e. whoever is shown first
    shown_first = [e["candidate_shown"] == "a" for e in rate.examples]
    assert shown_first[3] is True  # so the tie-breaker went to the candidate
    assert (rate.wins, rate.ties, rate.losses, rate.rate) == (3, 0, 1, 0.75)
    assert 0 < rate.low < 0.75 < rate.high <= 1


def test_the_topic_breakdown_groups_prompts_by_meaning():
    weather = ["rain tomorrow?", "is it sunny?", "will it snow?"]
    code = ["fix my python", "a rust error", "sort a list in go"]
    vectors = {p: [1.0, 0.1 * i] for i, p in enumerate(weather)} | {p: [0.1 * i, 1.0] for i, p in enumerate(code)}
    embed = lambda texts: [vectors[t] for t in texts]
    outcomes = ["win", "win", "tie", "loss", "loss", "win"]
    rows = topic_breakdown(weather + code, outcomes, embed)
    by_members = {row["topic"] in weather: row for row in rows}
    assert by_members[True]["wins"] == 2 and by_members[True]["ties"] == 1 and by_members[True]["rate"] == 5 / 6
    assert (by_members[False]["wins"], by_members[False]["losses"]) == (1, 2)
    assert all(row["n"] == 3 and row["low"] < row["rate"] < row["high"] for row in rows)
    assert topic_breakdown(weather + code[:1], ["win"] * 4, embed) == []  # too few for two topics


# --- KL between real adapters -------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    from tests.adapters import make_adapter

    folder = tmp_path_factory.mktemp("adapters")
    one = make_adapter(tiny_model, folder / "one", seed=1)
    shutil.copytree(one, folder / "one-copy")
    return {"one": one, "copy": folder / "one-copy", "two": make_adapter(tiny_model, folder / "two", seed=2)}


@pytest.fixture(scope="module")
def policies(tiny_model, adapters):
    """One PeftModel holding the candidate, its byte-identical copy and a different adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapters["one"],
                                      adapter_name=CANDIDATE)
    model.load_adapter(adapters["copy"], adapter_name="copy")
    model.load_adapter(adapters["two"], adapter_name="two")
    return model.eval(), AutoTokenizer.from_pretrained(tiny_model)


KL_PROMPTS = [chat("hello"), chat("what is the capital of France? answer briefly"), chat("hi")]
KL_ANSWERS = ["Hello there, how can I help?", "Paris.", ""]


def test_kl_is_zero_for_the_same_adapter_and_positive_for_a_different_one(policies):
    model, tokenizer = policies
    same = kl_to_active(model, tokenizer, KL_PROMPTS, KL_ANSWERS, active="copy")
    answer_tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in KL_ANSWERS)
    assert same["tokens"] == answer_tokens > 0  # the empty answer adds no tokens
    assert abs(same["per_token"]) < 1e-6
    other = kl_to_active(model, tokenizer, KL_PROMPTS, KL_ANSWERS, active="two")
    base = kl_to_active(model, tokenizer, KL_PROMPTS, KL_ANSWERS, active=None)  # active release = the bare base
    assert other["per_token"] > 1e-3 and base["per_token"] > 1e-3
    assert {CANDIDATE, "copy", "two"} <= set(model.peft_config)  # switched between, never unloaded


def test_kl_batching_and_padding_change_nothing(policies):
    model, tokenizer = policies
    batched = kl_to_active(model, tokenizer, KL_PROMPTS, KL_ANSWERS, active="two", max_batch_tokens=10_000)
    one_by_one = kl_to_active(model, tokenizer, KL_PROMPTS, KL_ANSWERS, active="two", max_batch_tokens=1)
    assert batched["tokens"] == one_by_one["tokens"]
    assert batched["per_token"] == pytest.approx(one_by_one["per_token"], rel=1e-4)


# --- end to end on the tiny model --------------------------------------------------------------------


GOLDEN = [GoldenItem("What is the capital of France?", "Paris."), GoldenItem("What is 12 multiplied by 12?", "144.")]
PROMPTS = [chat("hello"), chat("what is rust?"), chat("tell me a joke"), chat("how are you")]


def always_tie(prompt, a, b):
    return "tie"


def test_evaluate_release_end_to_end(tiny_model, adapters):
    evaluation = evaluate_release(str(tiny_model), str(adapters["one"]), str(adapters["two"]), PROMPTS, GOLDEN,
                                  {"shorter": shorter, "tie": always_tie}, output_check=CardCheck(),
                                  system_prompt=SYSTEM, max_tokens=6, device="cpu")
    body = json.loads(json.dumps(evaluation.as_dict()))  # JSON-able as it is
    assert body["primary_judge"] == "shorter" and list(body["win_rates"]) == ["shorter", "tie"]
    assert body["win_rates"]["shorter"]["n"] == 4 and body["win_rate"] == body["win_rates"]["shorter"]
    assert body["win_rates"]["tie"]["ties"] == 4 and body["win_rates"]["tie"]["rate"] == 0.5
    assert body["golden"]["n"] == 2 and body["golden"]["candidate"]["rouge_l"] is not None
    assert body["violations"]["n"] == 6  # 4 held-out + 2 golden answers per release
    assert body["kl"]["tokens"] > 0 and body["kl"]["per_token"] > 0  # different adapters
    assert body["length"]["candidate_words"] > 0 and body["topics"] == []  # 4 prompts: too few for topics
    kinds = [e["kind"] for e in body["examples"]]
    assert kinds == ["held-out"] * 4 + ["golden"] * 2
    assert body["examples"][4]["reference"] == "Paris." and set(body["examples"][0]["outcomes"]) == {"shorter", "tie"}
    metrics = evaluation.gate_metrics()
    assert metrics["win_rate"] == body["win_rates"]["shorter"]["rate"] and metrics["kl"] == body["kl"]["per_token"]
    gate = check(GateThresholds(0.0, 0.0, max_kl=0.0, max_length_drift=9.0, max_golden_drop=1.0), metrics)
    assert gate["summary"].startswith("Gate failed: KL to the active release (nats/token)")
    assert [c["key"] for c in gate["checks"] if not c["passed"]] == ["kl"]


def test_evaluate_release_with_the_same_adapter_finds_no_change(tiny_model, adapters):
    evaluation = evaluate_release(str(tiny_model), str(adapters["one"]), str(adapters["copy"]), PROMPTS[:3], GOLDEN,
                                  {"tie": always_tie}, system_prompt=SYSTEM, max_tokens=6, device="cpu")
    assert isinstance(evaluation, Evaluation)
    assert evaluation.golden["rouge_l_drop"] == 0.0 and evaluation.golden["bleu_drop"] == 0.0
    assert evaluation.length["drift"] == 0.0 and evaluation.violations is None
    assert abs(evaluation.kl["per_token"]) < 1e-6
    assert [e["candidate"] == e["active"] for e in evaluation.examples] == [True] * 5


def test_each_release_is_evaluated_under_its_own_instruction(tiny_model, adapters):
    from serving.transformers_engine import TransformersEngine

    asked: list[tuple[str, str]] = []

    class Recorded(TransformersEngine):  # the real engine, noting what each adapter was asked
        def stream(self, request):
            asked.append((request.adapter.rsplit("-", 1)[-1], request.messages[-1]["content"]))
            return super().stream(request)

    warm = "Use a warm, friendly, encouraging tone."
    evaluate_release(str(tiny_model), str(adapters["one"]), str(adapters["two"]), PROMPTS[:2], [], {"tie": always_tie},
                     system_prompt=SYSTEM, max_tokens=4, device="cpu",
                     answer_engine=lambda: Recorded(str(tiny_model), device="cpu"), candidate_instruction=warm)
    assert sorted(asked) == sorted([("candidate", f"hello\n\n{warm}"), ("candidate", f"what is rust?\n\n{warm}"),
                                    ("active", "hello"), ("active", "what is rust?")])


# --- report ------------------------------------------------------------------------------------------


def full_body() -> dict:
    history = [{"step": 1, "loss": 0.69, "rewards/margins": 0.0}, {"step": 2, "loss": 0.6, "rewards/margins": 0.2},
               {"step": 2, "eval_loss": 0.65}]
    grpo = [{"step": 1, "loss": 0.01, "reward": -0.5, "kl": 0.0}, {"step": 2, "loss": 0.02, "reward": 0.1}]
    win = {"wins": 6, "ties": 2, "losses": 2, "low": 0.4, "high": 0.85, "judge": "concise", "examples": [],
           "n": 10, "rate": 0.7}
    gate = check(GateThresholds(), {**PASSING, "kl": 1.4})
    return {
        "release": "r7-20261121-0300", "run_id": 7, "recipe": "dpo", "recipe_reason": "Enough A/B pairs <b>arrived</b>.",
        "base_release": "base", "created_at": "2026-11-21T03:00:00", "checksum": "ab" * 32,
        "data": {"train": 40, "held_out": 10, "new_pairs": 50, "by_source": {"comparison": 30, "thumb": 20}},
        "curation": {"rows_in": 60, "rows_out": 50, "removed": {"personal_data": 1, "duplicates": 7, "user_cap": 2},
                     "lines": ["rows in: 60", "duplicates: 7 removed", "rows out: 50"],
                     "agreement": {"alpha": 0.71, "items": 24, "by_kind": {"comparison": {"alpha": 0.71}}}},
        "gate": gate,
        "evaluation": {"win_rates": {"concise": win, "polite": {**win, "judge": "polite", "rate": 0.45, "low": 0.2,
                                                                 "high": 0.7}},
                       "primary_judge": "concise", "win_rate": win, "pair_accuracy": 0.72, "reward_pair_accuracy": 0.81,
                       "golden": {"n": 15, "candidate": {"rouge_l": 0.41, "bleu": 22.5},
                                  "active": {"rouge_l": 0.43, "bleu": 24.0}, "rouge_l_drop": 0.02, "bleu_drop": 1.5},
                       "violations": {"n": 25, "candidate": 0.04, "active": 0.04, "increase": 0.0,
                                      "candidate_count": 1, "active_count": 1},
                       "length": {"candidate_words": 31.5, "active_words": 40.1, "drift": -0.25},
                       "kl": {"per_token": 1.4, "tokens": 812},
                       "topics": [{"topic": "How do I reset my password?", "prompts": 4, "n": 4, "wins": 3, "ties": 0,
                                   "losses": 1, "rate": 0.75, "low": 0.3, "high": 0.95},
                                  {"topic": "Weather <script>", "prompts": 6, "n": 6, "wins": 2, "ties": 2,
                                   "losses": 2, "rate": 0.5, "low": 0.2, "high": 0.8}],
                       "examples": [{"kind": "held-out", "prompt": "Reset?", "candidate": "Click reset.",
                                     "active": "You may click the reset link.", "outcomes": {"concise": "win"}},
                                    {"kind": "golden", "prompt": "Capital of France?", "reference": "Paris.",
                                     "candidate": "Paris.", "active": "It is Paris."}]},
        "reward_model": {"pair_accuracy": 0.81, "train_pair_accuracy": 0.9, "threshold": 0.12,
                         "threshold_rule": "median of training-pair scores",
                         "thumbs": {"count": 12, "accuracy": 0.75, "precision": 0.8, "recall": 0.66, "f1": 0.72},
                         "counts": {"train_pairs": 40, "eval_pairs": 10, "eval_thumbs": 12}},
        "training": {"stages": {"reward": {"history": [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.5}],
                                           "summary": {"steps": 2, "last loss": 0.5}},
                                "dpo": {"history": history, "summary": {"steps": 2, "first loss": 0.69}},
                                "grpo": {"history": grpo, "summary": {"steps": 2}}}},
        "instruction": {"text": "Use simple words.", "adopted": ["simple"], "active": None, "max_golden_drop": 0.05,
                        "max_length_drift": 0.5,
                        "checked": [{"style": "warm", "rouge_l": 0.02, "rouge_l_drop": 0.13, "length_drift": 2.21,
                                     "holds": False, "adopted": False},
                                    {"style": "question", "rouge_l": 0.16, "rouge_l_drop": -0.01,
                                     "length_drift": -0.53, "holds": False, "adopted": False},
                                    {"style": "simple", "rouge_l": 0.14, "rouge_l_drop": 0.01, "length_drift": -0.34,
                                     "holds": True, "adopted": True}]},
    }


def images(html: str) -> list[str]:
    return re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', html)


def test_the_report_renders_every_section_from_a_full_body(tmp_path):
    body = full_body()
    json_path, html_path = report.write(body, tmp_path / "release")
    assert json.loads(json_path.read_text())["gate"]["passed"] is False
    html = html_path.read_text()
    verdict = re.search(r'<div id="verdict" class="verdict fail">(.*?)</div>', html).group(1)
    assert verdict == "Gate failed: KL to the active release (nats/token) 1.400 is above 1"
    assert html.index('id="verdict"') < html.index('id="gate"') < html.index('id="win-rates"')
    assert images(html) == ["win rate per judge", "win rate per topic", "golden-set scores", "loss curves",
                            "reward curves"]
    for text in ("(primary: the gate's)", "0.720", "0.810", "How do I reset my password?", "Weather &lt;script&gt;",
                 "drift -0.250", "increase 0.000", "1.4000", "812 tokens", "Click reset.", "Paris.",
                 "concise: win", "duplicates</td><td>7", "by_kind.comparison.alpha",
                 "thumbs F1 (up)</th><td>0.720", "eval_thumbs", "by_source.comparison", "<h3>grpo</h3>",
                 "Why dpo: Enough A/B pairs &lt;b&gt;arrived&lt;/b&gt;.", "<q>Use simple words.</q> (adopted tonight:\n  simple",
                 "beyond ±0.5):\n  warm (ROUGE-L drop 0.130, length +2.21), "
                 "question (ROUGE-L drop -0.010, length -0.53)."):
        assert text in html, text
    assert "<script>" not in html  # every text from users is escaped


def test_the_report_renders_a_body_missing_its_optional_parts():
    body = full_body()
    for key in ("curation", "reward_model", "recipe_reason", "checksum"):
        body.pop(key)
    body["training"] = {"stages": {"dpo": {"history": [], "summary": {}}}}
    body["evaluation"] = {"win_rates": {}, "primary_judge": None, "pair_accuracy": None, "golden": {"n": 0},
                          "violations": None, "length": {}, "kl": {"per_token": None, "tokens": 0}, "topics": [],
                          "examples": []}
    body["gate"] = check(GateThresholds(required=()), {})
    html = report.render_html(body)
    assert images(html) == []
    for text in ("Gate passed: nothing could be measured", "No judge was given", "No topic breakdown",
                 "No golden set was answered", "not measured (no output checks)", "No reward model was trained",
                 "No curation report", "No examples"):
        assert text in html, text
    assert html.count("not measured (does not block)") == 7
    bare = report.render_html({"release": "r1"})  # nothing but a name still renders
    assert "No gate was run." in bare and "No training stages recorded." in bare


def test_an_earlier_report_shape_still_renders():
    win = {"wins": 3, "ties": 0, "losses": 1, "low": 0.3, "high": 0.95, "judge": "shorter", "n": 4, "rate": 0.75,
           "examples": [{"prompt": "hi", "candidate": "a", "active": "bb", "verdict": "a", "candidate_shown": "a"}]}
    gate = check(GateThresholds(), {"pair_accuracy": 0.6, "win_rate": 0.75})
    body = {"release": "r2", "gate": gate, "data": {"train": 4},
            "evaluation": {"pair_accuracy": 0.6, "win_rate": win},
            "training": {"history": [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6}], "summary": {"steps": 2}}}
    html = report.render_html(body)
    assert images(html) == ["win rate per judge", "loss curves"]
    assert "candidate shown as a" in html and "<code>shorter</code>" in html


def test_every_plot_tolerates_missing_data():
    assert report.loss_plot(None) is None and report.loss_plot({"dpo": {"history": [{"step": 1}]}}) is None
    assert report.reward_plot({"dpo": {"history": [{"step": 1, "loss": 0.5}]}}) is None
    assert report.win_rates_plot(None) is None and report.win_rates_plot({"j": {"n": 0}}) is None
    assert report.topics_plot(None) is None and report.topics_plot([]) is None
    assert report.golden_plot(None) is None and report.golden_plot({"n": 0}) is None
    assert report.golden_plot({"n": 2, "candidate": {"rouge_l": None}, "active": {}}) is None
    assert report.loss_plot([{"step": 1, "loss": 0.5}]) is not None  # a bare history is one stage


def test_the_report_plots_each_stage_that_logged_something():
    stage_map = report.stages(full_body()["training"])
    curves = report._per_stage(stage_map, report.REWARD_KEYS)
    assert {name: list(keys) for name, keys in curves.items()} == {"dpo": ["rewards/margins"], "grpo": ["reward"]}
    assert list(report._per_stage(stage_map, ("loss", "eval_loss"))) == ["reward", "dpo", "grpo"]
