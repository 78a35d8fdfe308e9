"""``python -m services.metering_aggregator``: run the exactly-once metering aggregator.

``--check-config`` validates the settings and the meters-and-plans file, prints them and exits.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from pydantic import ValidationError

from services.kernel.errors import KafkaFatalError
from services.kernel.lifecycle import Lifecycle, install_signal_handlers
from services.kernel.logs import configure_logging
from services.metering_aggregator.app import build_app
from services.metering_aggregator.config import MeteringSettings
from services.metering_aggregator.processor import SERVICE
from services.plans.loader import ConfigError, load_config

log = logging.getLogger(SERVICE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.metering_aggregator", description=__doc__)
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    args = parser.parse_args(argv)
    try:
        settings = MeteringSettings()
        config = load_config(settings.config_path)
    except (ValidationError, ConfigError) as exc:
        print(f"invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(settings.model_dump_json(indent=2))
        print(
            f"meters-and-plans config version {config.version} ({config.effective_date}): "
            f"meters {[m.slug for m in config.meters]}, plans {[p.slug for p in config.plans]}"
        )
        return 0
    configure_logging(SERVICE, settings.platform.log_level, settings.platform.log_format)
    stop = threading.Event()
    install_signal_handlers(stop)
    with Lifecycle(SERVICE, stop) as life:
        app = build_app(settings, life)
        try:
            app.run(stop)
        except KafkaFatalError:
            log.exception("fatal Kafka error (fenced by a newer instance?); exiting for a restart")
            return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
