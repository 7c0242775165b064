"""`python -m tuneloop ...`: the `tuneloop` command, for launchers that take a module (`accelerate launch -m`)."""

from tuneloop.cli import app

app(prog_name="tuneloop")
