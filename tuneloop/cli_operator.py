"""`tuneloop releases ...` and `tuneloop users ...`: the operator's release and people commands, from a shell."""

from __future__ import annotations

import getpass
import json
import re
from collections.abc import Callable
from pathlib import Path

import typer

from tuneloop.settings import get_settings

releases_app = typer.Typer(help="Candidate releases: read their reports, approve, reject, roll back.",
                           no_args_is_help=True)
users_app = typer.Typer(help="People and their roles.", no_args_is_help=True)


def _session_and_actor():
    from store import users
    from store.db import make_engine
    from store.migrate import upgrade
    from store.models import Role
    from sqlmodel import Session

    database = make_engine(get_settings().database_url)
    upgrade(database)
    session = Session(database, expire_on_commit=False)
    # Whoever can reach the database from a shell is trusted as an operator; the audit log names them.
    actor = users.get_or_create_user(session, external_id=f"cli:{getpass.getuser()}", name=getpass.getuser(),
                                     role=Role.operator)
    return session, actor


def _act(action: Callable) -> None:  # noqa: ANN001
    from store import releases

    session, actor = _session_and_actor()
    with session:
        try:
            release = action(session, actor)
        except (releases.ReleaseError, releases.ReleaseNotFound) as error:
            typer.secho(str(error), fg="red", err=True)
            raise typer.Exit(1) from error
        session.commit()
        typer.echo(f"{release.name}: {release.state.value}"
                   + (f" on {release.canary_share:.0%} of conversations" if release.canary_share else ""))


@releases_app.command("list")
def list_releases() -> None:
    """Every release, newest first, with its state and gate line."""
    from store import releases

    session, _ = _session_and_actor()
    with session:
        for release in releases.listing(session):
            gate = (release.report.get("gate") or {}).get("summary", "")
            share = f" {release.canary_share:.0%}" if release.canary_share else ""
            typer.echo(f"{release.name:<24} {release.state.value + share:<14} {gate}")


@releases_app.command("show")
def show(name: str) -> None:
    """A release's report (JSON) and where its HTML page is."""
    from serving import canary
    from store import releases
    from store.models import ReleaseState
    from tuneloop.wiring import canary_policy

    session, _ = _session_and_actor()
    with session:
        release = releases.get(session, name)
        report = {k: v for k, v in release.report.items() if k not in ("training", "canary")}
        typer.echo(json.dumps({"name": release.name, "state": release.state.value, "checksum": release.checksum,
                               "adapter": release.adapter_path, **report}, indent=2, default=str))
        if release.adapter_path:
            typer.echo(f"report page: {Path(release.adapter_path).parent / 'report.html'}")
        active = releases.active_release(session)
        if release.state == ReleaseState.canary and active is not None:
            _, status = canary.current(session, release, active, canary_policy(get_settings()))
            typer.echo(canary_summary(status))
        elif release.report.get("canary"):
            typer.echo(canary_summary(release.report["canary"]))


def canary_summary(status: dict) -> str:
    """A canary's live evidence, as an operator reads it in a terminal."""
    choices, expected = status["choices"], status["expected"]
    lines = [f"canary since {status['since']}: {status['events']} events; decision: "
             f"{status['decision']['action']} ({status['decision']['reason']})",
             f"  interleaved choices: canary won {choices['canary_won']}, lost {choices['canary_lost']}, "
             f"ties {choices['ties']}"]
    for side, figures in status["metrics"].items():
        down = figures["thumbs_down_rate"]
        interval = f" [{down['low']:.2f}-{down['high']:.2f}]" if down["n"] else ""
        lines.append(f"  {side:<7} {figures['answers']} answers, {figures['errors']} errors, "
                     f"{figures['interventions']} guardrail interventions, thumbs down "
                     f"{down['rate'] if down['rate'] is None else round(down['rate'], 3)}{interval} of {down['n']}")
    for test in [*status["tests"].values(), status["promotion"]]:
        if test:
            lines.append(f"  {test['metric']:<24} statistic {test['log_ratio']:7.2f} / boundary {test['boundary']:.2f}"
                         f"  ({test['verdict']})")
    hours = expected.get("hours_to_decide")
    lines.append(f"  expected: {'no decision in sight at the current rate' if hours is None else f'{hours:.1f} h'} "
                 f"({expected['choices_per_hour']:.1f} choices an hour)")
    return "\n".join(lines)


@releases_app.command("export")
def export(name: str, folder: Path = typer.Argument(..., help="where to write the adapter and its card")) -> None:
    """Write a release's adapter (with its model card) to FOLDER, for plain PEFT or vLLM's --lora-modules."""
    import shutil

    from store import releases
    from store.artifacts import directory_checksum

    session, _ = _session_and_actor()
    with session:
        try:
            release = releases.get(session, name)
        except releases.ReleaseNotFound as error:
            typer.secho(str(error), fg="red", err=True)
            raise typer.Exit(1) from error
    if not release.adapter_path:
        typer.secho(f"{name} is the base model: there is no adapter to export", fg="red", err=True)
        raise typer.Exit(1)
    if folder.exists() and any(folder.iterdir()):
        typer.secho(f"{folder} is not empty: choose a new folder", fg="red", err=True)
        raise typer.Exit(1)
    if directory_checksum(release.adapter_path) != release.checksum:
        typer.secho(f"{name}'s adapter files are not the ones it was released with: not exported", fg="red", err=True)
        raise typer.Exit(1)
    shutil.copytree(release.adapter_path, folder, dirs_exist_ok=True)
    typer.echo(f"{name} written to {folder} (adapter and model card, checksum {release.checksum[:12]})")


@releases_app.command("approve")
def approve(name: str, canary: float = typer.Option(None, help="serve it to this share of conversations first")) -> None:
    """Approve a candidate: active at once, or a canary with --canary 0.2."""
    from store import releases

    _act(lambda session, actor: releases.approve(session, name, actor, canary=canary))


@releases_app.command("reject")
def reject(name: str, reason: str = typer.Option("", help="kept in the audit log")) -> None:
    from store import releases

    _act(lambda session, actor: releases.reject(session, name, actor, reason=reason))


@releases_app.command("promote")
def promote() -> None:
    """Make the canary the active release for everyone."""
    from store import releases

    _act(lambda session, actor: releases.promote(session, actor))


@releases_app.command("rollback")
def rollback(reason: str = typer.Option("", help="kept in the audit log")) -> None:
    """End the canary, or return to the previously active release."""
    from store import releases

    _act(lambda session, actor: releases.rollback(session, actor, reason=reason))


@users_app.command("add")
def add_user(
    name: str,
    role: str = typer.Option("user", help="user, reviewer or operator"),
    slack: str = typer.Option(None, "--slack", metavar="SLACK_USER_ID", help="give this Slack user (U...) the role"),
) -> None:
    """Create a person (or give them a new token) and print their bearer token once.

    With --slack, set the role of that Slack user instead; they need no token, the Slack app knows them.
    """
    from store import audit, users
    from store.models import Role

    try:
        chosen = Role(role)
    except ValueError as error:
        raise typer.BadParameter("role must be user, reviewer or operator") from error
    if slack is not None and not re.fullmatch(r"[UW][A-Z0-9]+", slack):
        raise typer.BadParameter("a Slack user id looks like U0123ABCD (in Slack: profile, ⋮, Copy member ID)",
                                 param_hint="--slack")
    session, actor = _session_and_actor()
    with session:
        if slack:
            _set_slack_role(session, actor, name, slack, chosen)
            return
        user = users.get_or_create_user(session, external_id=f"local:{name}", name=name, role=chosen)
        user.role = chosen
        token = users.issue_token(session, user=user)
        audit.record(session, actor=actor, action="user.token", target=f"user:{name}", details={"role": chosen.value})
        session.commit()
    typer.echo(token)


def _set_slack_role(session, actor, name: str, slack_id: str, role) -> None:  # noqa: ANN001
    from bot.slack.people import external_id
    from store import audit, users

    # The same user the Slack app finds or creates on first contact (bot/slack/people.py).
    user = users.get_or_create_user(session, external_id=external_id(slack_id), name=name, role=role)
    user.name, user.role = name, role
    session.add(user)
    audit.record(session, actor=actor, action="user.role", target=external_id(slack_id),
                 details={"role": role.value, "name": name})
    session.commit()
    typer.echo(f"{name} (Slack {slack_id}): {role.value}")
    settings = get_settings()
    if slack_id in settings.slack_operators or slack_id in settings.slack_reviewers:
        typer.echo("note: TUNELOOP_SLACK_OPERATORS / TUNELOOP_SLACK_REVIEWERS list this id; that role wins in Slack")


@users_app.command("forget")
def forget_user(
    who: str = typer.Argument(..., metavar="ID", help="the user's id, or their external id (slack:U0123ABCD, web:...)"),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
) -> None:
    """Forget a person: their conversations, answers, feedback, retry records and Slack events leave
    the store (so every later dataset); the audit log keeps that it happened, not what was said."""
    from sqlmodel import select

    from feedback import privacy
    from store.models import User

    session, actor = _session_and_actor()
    with session:
        query = select(User).where(User.id == int(who)) if who.isdigit() else select(User).where(User.external_id == who)
        user = session.exec(query).first()
        if user is None:
            raise typer.BadParameter(f"no user {who!r}: give a user id or an external id such as slack:U0123ABCD")
        if not yes:
            typer.confirm(f"Forget {user.name} ({user.external_id}) and everything they said?", abort=True)
        counts = privacy.forget(session, user, actor)
        session.commit()
    typer.echo("forgotten: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
