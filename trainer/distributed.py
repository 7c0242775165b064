"""One nightly run over many processes (`accelerate launch`, torchrun): who does what.

Every process calls `trainer.nightly.main`. The main process alone takes the lease, reads
and curates the data (saved in the run's folder), evaluates, and creates the release; it
sends the others the run it opened and, once the reward model is trained, the recipe it
chose. Every process trains: TRL's trainers share the batches and gradients among them.
With one process (plain `tuneloop train`) the sends do nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_NOTHING = object()


def processes():  # noqa: ANN201 - accelerate's PartialState
    """The process group, set up once: on CPU too (gloo), which is how it is tested here."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _broadcast(processes, value: Any) -> Any:  # noqa: ANN001
    if processes.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def receive(processes) -> Any:  # noqa: ANN001, ANN401
    """What the main process sends next (a follower's side of `Lead.send`)."""
    return _broadcast(processes, None)


class Lead:
    """The main process's side: `send` each step's decision; `None` first means "no run"."""

    def __init__(self, processes) -> None:  # noqa: ANN001
        self.processes = processes
        self.sent = 0

    def send(self, value: Any) -> None:  # noqa: ANN401
        _broadcast(self.processes, value)
        self.sent += 1


@contextmanager
def leading(processes) -> Iterator[Lead]:  # noqa: ANN001
    """A `Lead` that tells the others "no run" if the main process stops before saying anything
    (no active release, curation blocked), so they never wait for a run that will not come."""
    lead = Lead(processes)
    try:
        yield lead
    finally:
        if lead.sent == 0:
            lead.send(None)


def is_main(trainer) -> bool:  # noqa: ANN001
    """Whether this process writes the files a stage leaves behind (one writer, not N)."""
    return trainer.is_world_process_zero()


def wait(trainer) -> None:  # noqa: ANN001
    """Hold every process until the main one has written its files."""
    trainer.accelerator.wait_for_everyone()
