"""Nothing acknowledged is lost: SIGKILL under feedback load, on SQLite and on PostgreSQL."""

from __future__ import annotations

from tests.conftest import free_port
from tests.faults import kill_round


def test_every_acknowledged_write_survives_a_kill(database_url, tmp_path, tiny_model):
    result = kill_round(tmp_path / "var", str(tiny_model), database_url, free_port(), after=80)
    assert len(result.acknowledged) >= 80 and result.refused == 0
    assert result.lost == 0, f"{result.lost} of {len(result.acknowledged)} acknowledged writes are missing"
    assert result.replayed == len(result.acknowledged)  # each key answers as it did before the kill
    kinds = {ack.kind for ack in result.acknowledged}
    assert kinds == {"ratings", "comparisons", "corrections"}
