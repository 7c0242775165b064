"""The guardrails file: which validators run on the user's message (`input`) and on the
answer (`output`), their parameters, and what a failure does.

    output:
      - validator: max_length
        params: {max: 8000}
        on_fail: fix          # fix: use the validator's fix | refuse: show `message` | flag: count only
      - validator: prompt_leak
        on_fail: refuse
        message: "Sorry, I can't share that."

Loading and checking a file imports nothing from Guardrails AI (that import is slow), so a
bad file fails at start-up with its name and what to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")

OnFail = Literal["fix", "refuse", "flag"]
PiiKind = Literal["email", "phone", "card", "iban"]


class GuardrailsConfigError(ValueError):
    """A guardrails file that cannot be used; the message names the file and what to fix."""


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PiiParams(_Params):
    kinds: list[PiiKind] = Field(default_factory=lambda: ["email", "phone", "card", "iban"])
    # Regions whose national formats count as phone numbers, such as "(415) 555-2671" for US;
    # numbers written with +country code are found whatever this says.
    phone_regions: list[str] = Field(default_factory=lambda: ["US"])
    # Documentation domains (RFC 2606) are not anybody's address.
    allow_domains: list[str] = Field(default_factory=lambda: ["example.com", "example.org", "example.net"])

    @field_validator("phone_regions")
    @classmethod
    def _regions(cls, regions: list[str]) -> list[str]:
        for region in regions:
            if not re.fullmatch(r"[A-Z]{2}", region):
                raise ValueError(f"{region!r} is not a region code such as 'US', 'GB' or 'DE'")
        return regions


class InjectionParams(_Params):
    # injection: attempts to override the instructions; prompt_leak: requests for the system prompt
    kinds: list[Literal["injection", "prompt_leak"]] = Field(default_factory=lambda: ["injection", "prompt_leak"])
    extra_patterns: list[str] = Field(default_factory=list, description="more regexes (case-insensitive)")

    @field_validator("extra_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {error}") from None
        return patterns


class BanListParams(_Params):
    words: list[str] = Field(default_factory=list, description="words or phrases, matched as whole words")

    @field_validator("words")
    @classmethod
    def _not_blank(cls, words: list[str]) -> list[str]:
        if any(not word.strip() for word in words):
            raise ValueError("a banned word is empty")
        return words


class SecretsParams(_Params):
    pass


class ProfanityParams(_Params):
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0, description="profanity probability of a sentence")


class MaxLengthParams(_Params):
    max: int = Field(ge=1, description="characters")


class PromptLeakParams(_Params):
    system_prompt: str | None = Field(default=None, description="empty: TUNELOOP_SYSTEM_PROMPT")
    min_words: int = Field(default=8, ge=3, description="a run of this many prompt words in a row is a leak")


@dataclass(frozen=True)
class ValidatorSpec:
    params: type[_Params]
    reason: str  # the verdict's reason when it fails (tuneloop's validators give finer ones, "pii.email")
    can_fix: bool


VALIDATORS: dict[str, ValidatorSpec] = {
    "pii": ValidatorSpec(PiiParams, "pii", can_fix=True),  # emails, phones, cards, IBANs -> [email], ...
    "secrets": ValidatorSpec(SecretsParams, "secret", can_fix=True),  # API keys, tokens -> [secret]
    "prompt_injection": ValidatorSpec(InjectionParams, "injection", can_fix=False),
    "ban_list": ValidatorSpec(BanListParams, "ban_list", can_fix=True),  # -> [removed]
    "profanity": ValidatorSpec(ProfanityParams, "profanity", can_fix=True),  # profane sentences -> [removed]
    "max_length": ValidatorSpec(MaxLengthParams, "length", can_fix=True),  # truncates
    "prompt_leak": ValidatorSpec(PromptLeakParams, "prompt_leak", can_fix=False),  # repeats the system prompt
}


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    validator: str
    params: dict[str, Any] = Field(default_factory=dict)
    on_fail: OnFail
    message: str | None = Field(default=None, description="what the user sees when this rule refuses")

    @model_validator(mode="after")
    def _fits_validator(self) -> Rule:
        spec = VALIDATORS.get(self.validator)
        if spec is None:
            raise ValueError(f"unknown validator {self.validator!r}; known: {', '.join(VALIDATORS)}")
        try:
            self.params = spec.params.model_validate(self.params).model_dump()
        except ValidationError as error:
            problems = "; ".join(f"params.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise ValueError(problems) from None
        if self.on_fail == "fix" and not spec.can_fix:
            raise ValueError(f"{self.validator} cannot fix a text: use on_fail: refuse or flag")
        if self.on_fail == "refuse" and not (self.message or "").strip():
            raise ValueError("on_fail: refuse needs a message, the text the user sees instead")
        return self

    @property
    def spec(self) -> ValidatorSpec:
        return VALIDATORS[self.validator]


class GuardrailsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: list[Rule] = Field(default_factory=list)
    output: list[Rule] = Field(default_factory=list)
    # Rewrites of every text before it is stored (prompts, answers, comments, corrections):
    # only `fix` rules make sense here, since a stored text is never refused, only redacted.
    store: list[Rule] = Field(default_factory=list)

    @field_validator("store")
    @classmethod
    def _fixes_only(cls, rules: list[Rule]) -> list[Rule]:
        for rule in rules:
            if rule.on_fail != "fix":
                raise ValueError(f"store rules redact: {rule.validator} must have on_fail: fix, not {rule.on_fail}")
        return rules

    @field_validator("input", "output", "store")
    @classmethod
    def _once_each(cls, rules: list[Rule]) -> list[Rule]:
        names = [rule.validator for rule in rules]
        for name in set(names):
            if names.count(name) > 1:
                raise ValueError(f"{name} is listed {names.count(name)} times: merge them into one entry")
        return rules


def load_config(path: Path | str | None = None) -> GuardrailsConfig:
    """Read and check a guardrails file (the bundled default when `path` is empty)."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GuardrailsConfigError(
            f"{path}: no such file. Point TUNELOOP_GUARDRAILS_CONFIG at a YAML file, "
            "or leave it empty for the bundled default") from None
    except yaml.YAMLError as error:
        raise GuardrailsConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict) or not data:
        raise GuardrailsConfigError(
            f"{path}: expected a mapping with `input:`, `output:` and/or `store:` lists of validators")
    try:
        return GuardrailsConfig.model_validate(data)
    except ValidationError as error:
        problems = "\n".join(f"  {_where(e['loc'], data)}: {_message(e)}" for e in error.errors())
        raise GuardrailsConfigError(f"{path}: {error.error_count()} problem(s) to fix:\n{problems}") from None


def _where(loc: tuple, data: dict) -> str:
    """('output', 2, 'on_fail') -> 'output[2] (max_length) on_fail'."""
    text = str(loc[0]) if loc else "(top level)"
    if len(loc) > 1 and isinstance(loc[1], int):
        text += f"[{loc[1]}]"
        rules = data.get(loc[0])
        entry = rules[loc[1]] if isinstance(rules, list) and loc[1] < len(rules) else None
        if isinstance(entry, dict) and "validator" in entry:
            text += f" ({entry['validator']})"
        rest = loc[2:]
    else:
        rest = loc[1:]
    return " ".join([text, *map(str, rest)])


def _message(error: dict) -> str:
    message = error["msg"]
    return message.removeprefix("Value error, ")
