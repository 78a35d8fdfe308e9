"""Run the schema registry: ``python -m services.schema_registry [--check-config]``.

uvicorn serves the app and turns SIGTERM/SIGINT into a graceful shutdown (in-flight requests finish,
then the lifespan closes the database pool).
"""

from __future__ import annotations

import argparse
import json
import sys

import uvicorn
from pydantic import ValidationError

from services.kernel.logs import configure_logging
from services.schema_registry.app import build_app
from services.schema_registry.config import RegistrySettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.schema_registry", description=__doc__)
    parser.add_argument("--check-config", action="store_true", help="validate the settings, print them, exit")
    args = parser.parse_args(argv)
    try:
        settings = RegistrySettings()
    except ValidationError as exc:
        print(f"invalid schema registry configuration:\n{exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(json.dumps(settings.describe(), indent=2))
        return 0
    configure_logging("schema-registry", settings.platform.log_level, settings.platform.log_format)
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,  # keep the kernel's structured logging
        access_log=False,  # request counts and latencies are on /metrics
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
