"""The built-in guardrails plugin: a Guardrails AI `Guard` on each user message and on each
answer, configured from a YAML file (`TUNELOOP_GUARDRAILS_CONFIG`, else `default.yaml` here).

Modules: `config` (the file's schema, no Guardrails import), `validators` (tuneloop's own
validators, registered with Guardrails AI), `guards` (builds a Guard and turns its outcome
into a `Verdict`), `plugin` (the pluggy hooks).
"""
