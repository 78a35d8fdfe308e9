"""An application using the SDK, run as its own process by the e2e tests.

    python sdk_client_script.py track <url> <key> <queue_dir> <n>     # track n events + identify, exit
    python sdk_client_script.py flush <url> <key> <queue_dir> <secs>  # deliver what is queued, exit

Prints one JSON line: the ids it tracked and the client's stats.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict

from plg_sdk import Client


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    command, url, key, queue_dir, arg = sys.argv[1:6]
    client = Client(
        key,
        url,
        queue_dir=queue_dir,
        flush_interval=0.1,
        backoff_base=0.1,
        backoff_max=0.5,
        shutdown_timeout=1.0,
        flush_at=int(sys.argv[6]) if len(sys.argv) > 6 else 100,
    )
    ids: list[str] = []
    if command == "track":
        for i in range(int(arg)):
            ids.append(client.track("e2e_event", {"i": i, "kind": "offline"}))
        ids.append(client.identify("user-e2e", {"plan": "pro"}))
        client.close()  # ingest is down: waits shutdown_timeout, the events stay on disk
        delivered = None
    else:
        delivered = client.flush(timeout=float(arg))
        client.close()
    print(
        json.dumps({"ids": ids, "delivered": delivered, "pending": client.pending(), **asdict(client.stats)})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
