"""Run the schema registry: ``python -m services.schema_registry [--check-config]``.

uvicorn serves the app and turns SIGTERM/SIGINT into a graceful shutdown (in-flight requests finish,
then the lifespan closes the database pool).
"""

from __future__ import annotations

from services.kernel.service import HttpOptions, run_service
from services.schema_registry.app import SERVICE, build_app
from services.schema_registry.config import RegistrySettings


def main(argv: list[str] | None = None) -> int:
    return run_service(
        SERVICE,
        RegistrySettings,
        build_app,
        http=HttpOptions(timeout_graceful_shutdown=10),
        argv=argv,
        description=__doc__,
    )


if __name__ == "__main__":
    raise SystemExit(main())
