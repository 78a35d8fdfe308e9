"""``python -m services.stripe_emulator [--host H] [--port P] [--webhook-url URL]``: the stateful Stripe
emulator of the local stack (default ``127.0.0.1:12120``), its events signed with
``STRIPE_WEBHOOK_SECRET`` and delivered to ``--webhook-url`` (``$STRIPE_EMULATOR_WEBHOOK_URL``).
State lives in memory: a restart starts an empty Stripe account."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from services.stripe_emulator.emulator import StripeEmulator

DEFAULT_PORT = 12120
SAVE_EVERY_S = 3.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stripe_emulator", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("STRIPE_EMULATOR_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("STRIPE_EMULATOR_PORT", DEFAULT_PORT)))
    parser.add_argument("--webhook-url", default=os.environ.get("STRIPE_EMULATOR_WEBHOOK_URL") or None)
    parser.add_argument(
        "--state-file",
        type=Path,
        default=os.environ.get("STRIPE_EMULATOR_STATE_FILE") or None,
        help="keep the account here across restarts (saved every few seconds and at exit)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET", "whsec_plg_local")
    emulator = StripeEmulator(webhook_url=args.webhook_url, webhook_secret=secret)
    if args.state_file is not None:
        emulator.load(args.state_file)
    emulator.serve(args.host, args.port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    logging.getLogger("stripe-emulator").info(
        "Stripe emulator on %s, webhooks to %s", emulator.url, args.webhook_url or "nowhere"
    )
    saved_at = -1
    while not stop.wait(SAVE_EVERY_S):
        if args.state_file is not None and emulator.stats.requests != saved_at:
            saved_at = emulator.stats.requests
            emulator.save(args.state_file)
    emulator.close()
    if args.state_file is not None:
        emulator.save(args.state_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
