"""Per-flag local evaluation cost of the Python SDK's engine, on the shared vectors (the same loop as
sdk/js/bench/flags.mjs): ``python sdk/bench_flags.py [rounds]``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from plg_sdk.flags import compile_document

VECTORS = json.loads((Path(__file__).parent / "testdata" / "flag_evaluations.json").read_text())


def run(label: str, rounds: int, fresh_user: bool) -> None:
    flags = compile_document(VECTORS["document"])
    cases: list[dict[str, Any]] = VECTORS["cases"]

    def contexts(r: int) -> list[tuple[str, dict[str, Any]]]:
        if not fresh_user:
            return [(c["flag"], c["context"]) for c in cases]
        return [(c["flag"], {**c["context"], "user_id": f"u-{r}"}) for c in cases]

    batches = [contexts(r) for r in range(rounds)]  # built outside the timed loop
    started = time.perf_counter()
    for batch in batches:
        for key, ctx in batch:
            flags.evaluate(key, ctx)
    per = (time.perf_counter() - started) / (rounds * len(cases))
    print(f"{label}: {per * 1e6:.3f} µs per evaluation ({rounds * len(cases)} evaluations)")


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    run("python, same contexts (buckets cached)", n, False)
    run("python, a new user per round (hashing)", n, True)
