"""``python -m services.health_score.backfill [--days 56] [--customer ID ...]``: rebuild the daily score
history from the stored facts (the batch path), e.g. after changing deploy/config/health.yaml. Reads the
service's settings (``HEALTH_*``, ``DATABASE_URL``); the sparklines of a running service pick the new
history up at its next start."""

from __future__ import annotations

import argparse
import time

from services.health_score.app import PLANS_FILE, seats_limits
from services.health_score.batch import backfill
from services.health_score.config import HealthSettings
from services.health_score.processor import FactsBuilder
from services.health_score.registry import load_config
from services.health_score.store import HealthStore
from services.kernel import db


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=56)
    parser.add_argument("--customer", action="append", help="only these customers (repeatable)")
    args = parser.parse_args(argv)
    settings = HealthSettings()
    config = load_config(settings.config_path)
    with db.open_pool(settings.database, name="health-backfill") as pool:
        store = HealthStore(pool, f"{settings.platform.topic_prefix}{settings.group_id}")
        started = time.monotonic()
        n = backfill(
            store,
            config,
            FactsBuilder(config, seats_limits(PLANS_FILE.load(settings)), settings.max_persons_per_day),
            int(time.time() * 1000),
            args.days,
            args.customer,
        )
    print(f"wrote {n} daily scores in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
