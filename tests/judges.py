"""Judges for tests: deterministic and never a tie, so every A/B choice becomes a training pair."""


def shorter(prompt: str, answer_a: str, answer_b: str) -> str:
    return "a" if len(answer_a) <= len(answer_b) else "b"

