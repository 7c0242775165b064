"""Faults: SIGKILL rounds under feedback load, on SQLite and on PostgreSQL.

Each round (tests/faults.py) starts the real service, has visitors chat and then post ratings,
A/B choices and corrections as fast as it takes them, kills the service with SIGKILL in the
middle, starts it again on the same store, and looks for every write that got a 2xx: its row,
and its Idempotency-Key replaying the same answer. Prints acknowledged, found, replayed and
lost (must be 0) per round, and the totals.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/faults.py                 # 5 rounds on each
    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/faults.py --rounds 2 --databases sqlite
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT))

from bench._service import OUT, free_port, model_path  # noqa: E402
from tests.faults import kill_round  # noqa: E402

POSTGRES_URL = os.environ.get("TUNELOOP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_schema() -> tuple[str, str]:
    from sqlalchemy import text

    from store.db import make_engine

    schema = f"faults_{uuid.uuid4().hex[:10]}"
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    return schema, f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


def drop_schema(schema: str) -> None:
    from sqlalchemy import text

    from store.db import make_engine

    admin = make_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--after", type=int, default=150, help="acknowledged writes before the kill")
    parser.add_argument("--model", default="tiny", help="'tiny' (default) or a model folder")
    args = parser.parse_args()
    model = model_path(args.model)
    totals = {"acknowledged": 0, "found": 0, "replayed": 0}
    print(f"{'database':10s} {'round':>5s} {'acked':>6s} {'found':>6s} {'replayed':>8s} {'cut off':>7s} {'lost':>5s}")
    for database in args.databases.split(","):
        for n in range(args.rounds):
            folder = OUT / "faults" / f"{database}-{n}"
            shutil.rmtree(folder, ignore_errors=True)
            schema, url = postgres_schema() if database == "postgresql" else (None, f"sqlite:///{folder / 'store.db'}")
            try:
                result = kill_round(folder, model, url, free_port(), after=args.after, seed=n)
            finally:
                if schema:
                    drop_schema(schema)
            totals["acknowledged"] += len(result.acknowledged)
            totals["found"] += result.found
            totals["replayed"] += result.replayed
            print(f"{database:10s} {n:5d} {len(result.acknowledged):6d} {result.found:6d} {result.replayed:8d} "
                  f"{result.cut_off:7d} {result.lost:5d}", flush=True)
    share = totals["found"] / totals["acknowledged"] if totals["acknowledged"] else 0
    print(f"acknowledged writes found after a kill: {totals['found']} / {totals['acknowledged']} ({share:.1%}); "
          f"replayed by their key: {totals['replayed']}")


if __name__ == "__main__":
    main()
