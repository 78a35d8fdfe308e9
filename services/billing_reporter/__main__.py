"""``python -m services.billing_reporter``: the billing reporter and its API (default port 8083).

``--check-config`` validates the settings (Stripe's key and webhook secret masked) and the
meters-and-plans file, prints them and exits.
"""

from __future__ import annotations

from services.billing_reporter.app import SERVICE, build_app
from services.billing_reporter.config import BillingSettings
from services.kernel.service import HttpOptions, run_service
from services.plans.loader import plans_file


def main(argv: list[str] | None = None) -> int:
    return run_service(
        SERVICE,
        BillingSettings,
        build_app,
        http=HttpOptions(),
        config_files=[plans_file()],
        argv=argv,
        description=__doc__,
    )


if __name__ == "__main__":
    raise SystemExit(main())
