"""``python -m services.entitlements``: serve the entitlement API (default port 8082).

``--check-config`` validates the settings and the meters-and-plans file, prints them and exits.
"""

from __future__ import annotations

import sys

from services.entitlements.app import SERVICE, build_app
from services.entitlements.config import EntitlementsSettings
from services.kernel.service import HttpOptions, run_service
from services.plans.loader import plans_file


def main(argv: list[str] | None = None) -> int:
    # The usage view's thread and the request loop share the GIL; handing it over every 0.5 ms instead of
    # Python's default 5 ms keeps a check from waiting behind a batch of aggregates (p99 latency).
    sys.setswitchinterval(0.0005)
    return run_service(
        SERVICE,
        EntitlementsSettings,
        build_app,
        http=HttpOptions(),
        config_files=[plans_file()],
        argv=argv,
        description=__doc__,
    )


if __name__ == "__main__":
    raise SystemExit(main())
