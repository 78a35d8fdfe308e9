"""``make demo``: a populated plg on top of ``make up``'s stack, so the CS dashboard, the analytics pages,
billing and ``plg activation suggest`` show something real.

1. Customers (``demo-0000`` ...) across the plans, each with a secret key, and an admin operator token.
   Re-running reuses them: secret keys and the token are only shown once, so they are kept in
   ``.plg/demo/state.json`` (under the stack's root) and recreated only when the database lost them.
2. ``--days`` of history per customer (deterministic with ``--seed``), imported through ingest's
   ``POST /v1/import`` (analytics only, never billed): signups, usage (some free accounts up to their
   limits), team invites, and a **planted activation effect** — accounts that create at least 3 projects in
   their first 14 days stay active; most of the others go quiet (churn) after a few weeks. Event ids are
   derived from the seed, so re-importing stores nothing twice. Some customers get a support ticket.
3. Live traffic through ``POST /v1/batch`` at ``--rate`` events/s from the customers still active, until
   Ctrl-C; then it prints where to look.

It lives in ``services/devstack`` (not ``services/cli``) because it is development tooling bound to the
local stack's ports and files, like ``make run``, not a command an operator runs against production.
Upgrades go the way a customer's would: each free signup the generator upgraded is created on free, then
the demo opens a checkout for its new plan at the billing reporter (``POST /v1/checkout/{customer}``, as
the admin operator) and completes it at the Stripe emulator (the browser's part); the emulator's signed
``checkout.session.completed`` webhook is what moves the customer to the paid plan, with a subscription
billing then reconciles.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from services.devstack.config import StackSettings

DAY_MS = 86_400_000
ACTIVATION_DAYS = 14
ACTIVATION_PROJECTS = 3  # deploy/config/activation.yaml: project_created, count 3
CHUNK_EVENTS = 500  # ingest's per-request limit (events); bodies stay well under 500 KB
ADMIN_NAME = "demo-admin"
# Plans at signup (the tracking plan's signup_completed.plan enum) and what free signups upgrade to.
SIGNUP_PLANS = (("free", 0.75), ("pro", 0.2), ("enterprise", 0.05))
UPGRADES = ("starter", "growth", "pro")
ENDPOINTS = ("/v1/projects", "/v1/runs", "/v1/users", "/v1/search")
REGIONS = ("us-east-1", "eu-west-1")
PROJECT_TYPES = ("web", "data", "mobile")
TICKET_SUBJECTS = ("Cannot invite a teammate", "API returns 429", "Invoice question", "SSO setup")


@dataclass(frozen=True, slots=True)
class Profile:
    """One demo customer as the generator planned it."""

    customer_id: str
    signup_plan: str
    plan: str  # the current plan (differs from signup_plan after an upgrade)
    signup_ms: int
    activated: bool  # >= 3 project_created in the first 14 days
    churn_ms: int | None  # the last day it is active; None: still active
    users: int
    heavy: bool  # uses its plan up to the limits
    ticket: str | None


@dataclass(slots=True)
class History:
    profiles: list[Profile] = field(default_factory=list)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # customer_id -> events


def customer_id(n: int) -> str:
    return f"demo-{n:04d}"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([w[0] for w in weighted], weights=[w[1] for w in weighted])[0]


def plan_profile(n: int, days: int, now_ms: int, seed: int) -> Profile:
    rng = random.Random(f"{seed}:profile:{n}")
    start_ms = (now_ms // DAY_MS - days) * DAY_MS
    # Signups spread over the period, leaving every account at least its 14-day activation window.
    signup_ms = start_ms + rng.randrange(max(1, days - ACTIVATION_DAYS)) * DAY_MS + rng.randrange(DAY_MS)
    signup_plan = _pick(rng, SIGNUP_PLANS)
    activated = rng.random() < 0.45
    churn_ms: int | None = None
    if activated:
        if rng.random() < 0.08:  # a few activated accounts leave anyway: the effect is strong, not total
            churn_ms = signup_ms + rng.randint(30, 80) * DAY_MS
    elif rng.random() < 0.85:
        churn_ms = signup_ms + rng.randint(ACTIVATION_DAYS + 1, 28) * DAY_MS
    if churn_ms is not None and churn_ms >= now_ms:
        churn_ms = None
    plan = signup_plan
    if signup_plan == "free" and activated and rng.random() < 0.35:
        plan = rng.choice(UPGRADES)
    return Profile(
        customer_id=customer_id(n),
        signup_plan=signup_plan,
        plan=plan,
        signup_ms=signup_ms,
        activated=activated,
        churn_ms=churn_ms,
        users=rng.randint(1, 8 if plan in ("pro", "enterprise") else 4),
        heavy=activated and rng.random() < 0.25,
        ticket=rng.choice(TICKET_SUBJECTS) if rng.random() < 0.15 else None,
    )


def _event(rng: random.Random, name: str, ts_ms: int, user: str, **props: Any) -> dict[str, Any]:
    return {
        "event_id": _uuid(rng),
        "name": name,
        "timestamp": _iso(ts_ms),
        "user_id": user,
        "properties": props,
    }


def day_events(
    rng: random.Random, p: Profile, day_ms: int, until_ms: int, first_day: bool
) -> Iterator[dict[str, Any]]:
    """One active day of a customer: sign-ins, API calls, core actions, jobs, sometimes storage/seats."""

    def at() -> int:
        return min(day_ms + rng.randrange(DAY_MS), until_ms - 1)

    users = [f"{p.customer_id}-u{i}" for i in range(p.users)]
    owner = users[0]
    if first_day:
        yield _event(
            rng,
            "signup_completed",
            p.signup_ms,
            owner,
            plan=p.signup_plan,
            source=rng.choice(("web", "ads", "partner")),
        )
        yield _event(rng, "seats_changed", p.signup_ms + 1000, owner, seats=p.users)
    signed_in = rng.sample(users, rng.randint(1, len(users)))
    for user in signed_in:
        yield _event(rng, "user_signed_in", at(), user, method=rng.choice(("password", "sso", "oauth")))
        # Heavy accounts make 50-75 API calls a day between them (past the free plan's 1,000 a month);
        # the others stay well below.
        calls = rng.randint(50, 75) // len(signed_in) + 1 if p.heavy else rng.randint(0, 6)
        for _ in range(calls):
            yield _event(
                rng,
                "api_call_made",
                at(),
                user,
                endpoint=rng.choice(ENDPOINTS),
                latency_ms=round(rng.uniform(5, 300), 1),
                status=rng.choice((200, 200, 200, 201, 404, 429)),
            )
        if rng.random() < (0.6 if p.activated else 0.2):
            yield _event(
                rng, "core_action_completed", at(), user, action=rng.choice(("report", "deploy", "sync"))
            )
        if rng.random() < 0.1:
            yield _event(
                rng, "page_viewed", at(), user, path=rng.choice(("/", "/docs", "/pricing", "/settings"))
            )
    if rng.random() < (0.3 if p.heavy else 0.1):
        yield _event(
            rng,
            "job_completed",
            at(),
            owner,
            duration_seconds=rng.randint(30, 600),
            region=rng.choice(REGIONS),
        )
    if rng.random() < 1 / 7:
        yield _event(
            rng, "storage_measured", at(), owner, gb=round(rng.uniform(0.1, 0.95 if not p.heavy else 1.2), 2)
        )


def history_of(p: Profile, now_ms: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}:history:{p.customer_id}")
    owner = f"{p.customer_id}-u0"
    events: list[dict[str, Any]] = []
    # The planted effect: the first 14 days decide. Activated accounts create >= 3 projects in them and
    # invite teammates; the others create 0-2 (and a churned account's activity stops at churn_ms).
    projects = rng.randint(ACTIVATION_PROJECTS, 6) if p.activated else rng.randint(0, ACTIVATION_PROJECTS - 1)
    for _ in range(projects):
        ts = p.signup_ms + rng.randrange(ACTIVATION_DAYS * DAY_MS)
        events.append(
            _event(rng, "project_created", min(ts, now_ms - 1), owner, project_type=rng.choice(PROJECT_TYPES))
        )
    if p.activated and p.users > 1:
        for _ in range(rng.randint(2, 3)):
            ts = p.signup_ms + rng.randrange(ACTIVATION_DAYS * DAY_MS)
            events.append(
                _event(
                    rng,
                    "team_invite_sent",
                    min(ts, now_ms - 1),
                    owner,
                    role=rng.choice(("member", "admin")),
                    invitee_domain="example.com",
                )
            )
    end_ms = now_ms if p.churn_ms is None else p.churn_ms
    day = p.signup_ms // DAY_MS * DAY_MS
    first = True
    while day < end_ms:
        # Active on most days; an account that did not activate fades out before it stops.
        if first or rng.random() < (0.8 if p.activated else 0.45):
            events.extend(day_events(rng, p, max(day, p.signup_ms), end_ms, first))
            first = False
        day += DAY_MS
    events.sort(key=lambda e: e["timestamp"])
    return events


def generate(customers: int, days: int, seed: int, now_ms: int) -> History:
    history = History()
    for n in range(customers):
        p = plan_profile(n, days, now_ms, seed)
        history.profiles.append(p)
        history.events[p.customer_id] = history_of(p, now_ms, seed)
    return history


def live_events(rng: random.Random, p: Profile, count: int, now_ms: int) -> list[dict[str, Any]]:
    """``count`` events of an active customer, stamped now (billed like any live usage)."""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        for event in day_events(rng, p, now_ms, now_ms + 1, first_day=False):
            event["timestamp"] = _iso(now_ms)
            out.append(event)
            if len(out) >= count:
                break
        if rng.random() < 0.05:
            out.append(_event(rng, "project_created", now_ms, f"{p.customer_id}-u0", project_type="web"))
    return out[:count]


def chunks(events: list[dict[str, Any]], size: int = CHUNK_EVENTS) -> Iterator[bytes]:
    for i in range(0, len(events), size):
        yield b"\n".join(orjson.dumps(e) for e in events[i : i + size])


# --- the stack side -----------------------------------------------------------------------------------


class DemoError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _state_path(stack: StackSettings) -> Path:
    return stack.root / "demo" / "state.json"


def _load_state(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.chmod(0o600)  # secret keys and an admin token
    tmp.replace(path)


def provision(database_url: str, profiles: list[Profile], state_file: Path) -> tuple[dict[str, str], str]:
    """Customers, their secret keys and the admin operator token, reusing what an earlier run made."""
    import psycopg

    from services.customers import store
    from services.enrichment import store as success
    from services.kernel import apikeys
    from services.kernel.db import migrate

    state = _load_state(state_file)
    keys: dict[str, str] = dict(state.get("keys", {}))
    key_ids: dict[str, str] = dict(state.get("key_ids", {}))
    try:
        migrate(database_url)
        conn = psycopg.connect(database_url, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DemoError(f"cannot reach PostgreSQL at {database_url} (is `make up` running?): {exc}") from None
    with conn:
        for p in profiles:
            if store.get_customer(conn, p.customer_id) is None:
                # On the plan it signed up with: an upgrade goes through checkout (upgrade_through_checkout).
                store.create_customer(conn, p.customer_id, p.signup_plan, name=f"Demo {p.customer_id[5:]}")
            live = {k.key_id for k in apikeys.list_keys(conn, p.customer_id) if k.revoked_at is None}
            if key_ids.get(p.customer_id) not in live:  # none yet, or revoked: a new one
                row, keys[p.customer_id] = apikeys.create_key(conn, p.customer_id, "make demo")
                key_ids[p.customer_id] = row.key_id
            if p.ticket and not success.list_tickets(conn, p.customer_id, include_closed=True):
                success.open_ticket(
                    conn, p.customer_id, p.ticket, "high" if p.plan == "enterprise" else "normal"
                )
        token = state.get("operator_token")
        active = {o.name for o in apikeys.list_operators(conn) if o.revoked_at is None}
        if not token or ADMIN_NAME not in active:
            if ADMIN_NAME in active:  # its token was lost with the state file: only a new one can be shown
                apikeys.revoke_operator(conn, ADMIN_NAME)
            _, token = apikeys.create_operator(conn, ADMIN_NAME, "admin")
    _save_state(state_file, {**state, "keys": keys, "key_ids": key_ids, "operator_token": token})
    return keys, str(token)


def _plans(database_url: str, customers: list[str]) -> dict[str, str]:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT customer_id, plan FROM customers WHERE customer_id = ANY(%s)", (customers,)
        ).fetchall()
    return {str(c): str(p) for c, p in rows}


def upgrade_through_checkout(
    stack: StackSettings, profiles: list[Profile], token: str, timeout: float = 120.0
) -> tuple[int, list[str]]:
    """Each upgraded profile not yet on its plan: a checkout at the billing reporter, completed (paid) at the
    Stripe emulator, whose signed webhook moves the customer. Returns how many moved, and those that did
    not within ``timeout`` (with why, when a step was refused)."""
    from services.devstack.stack import STRIPE_LOCAL_DEFAULTS

    wanted = {p.customer_id: p.plan for p in profiles if p.plan != p.signup_plan}
    if not wanted:
        return 0, []
    billing = f"http://{stack.host}:{stack.service_ports.get('billing-reporter', 8083)}"
    emulator = stack.stripe_emulator_url
    stripe_key = os.environ.get("STRIPE_API_KEY", STRIPE_LOCAL_DEFAULTS["STRIPE_API_KEY"])
    current = _plans(stack.database_url, sorted(wanted))
    todo = {c: plan for c, plan in wanted.items() if current.get(c) != plan}
    failed: list[str] = []
    with httpx.Client(timeout=60) as client:
        for customer, plan in sorted(todo.items()):
            answer = client.post(
                f"{billing}/v1/checkout/{customer}",
                json={"plan": plan},
                headers={"Authorization": f"Bearer {token}"},
            )
            if answer.status_code != 200:
                failed.append(f"{customer}: checkout answered {answer.status_code} {answer.text[:200]}")
                continue
            session = answer.json().get("session_id")
            if session is None:  # a plan change of an existing subscription: Stripe's update moves it
                continue
            paid = client.post(
                f"{emulator}/_emulator/checkout/sessions/{session}/complete",
                data={"payment_status": "paid"},
                headers={"Authorization": f"Bearer {stripe_key}"},
            )
            if paid.status_code >= 300:
                failed.append(f"{customer}: the emulator answered {paid.status_code} {paid.text[:200]}")
    refused = {line.split(":", 1)[0] for line in failed}
    deadline = time.monotonic() + timeout
    pending = [c for c in todo if c not in refused]
    while pending and time.monotonic() < deadline:
        time.sleep(1)
        now = _plans(stack.database_url, pending)
        pending = [c for c in pending if now.get(c) != todo[c]]
    failed += [
        f"{c}: still not on {todo[c]} after {timeout:g} s (billing reporter's webhook?)" for c in pending
    ]
    return len(todo) - len(failed), failed


def import_history(ingest_url: str, history: History, keys: dict[str, str]) -> tuple[int, int]:
    accepted = rejected = 0
    with httpx.Client(timeout=60) as client:
        for done, p in enumerate(history.profiles, start=1):
            for body in chunks(history.events[p.customer_id]):
                response = client.post(
                    f"{ingest_url}/v1/import",
                    content=body,
                    headers={
                        "Authorization": f"Bearer {keys[p.customer_id]}",
                        "Content-Type": "application/x-ndjson",
                    },
                )
                if response.status_code != 202:
                    raise DemoError(
                        f"import for {p.customer_id}: {response.status_code} {response.text[:300]}"
                    )
                for result in response.json().get("results", []):
                    if result.get("status") == "accepted":
                        accepted += 1
                    else:
                        rejected += 1
            if done % 25 == 0 or done == len(history.profiles):
                print(
                    f"  history: {done}/{len(history.profiles)} customers, {accepted} events imported",
                    flush=True,
                )
    return accepted, rejected


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True


def live_traffic(
    ingest_url: str, profiles: list[Profile], keys: dict[str, str], rate: float, seed: int
) -> None:
    active = [p for p in profiles if p.churn_ms is None]
    if not active:
        return
    stop = _Stop()
    previous = signal.signal(signal.SIGINT, stop)
    rng = random.Random(f"{seed}:live:{time.time_ns()}")
    sent = refused = 0
    started = time.monotonic()
    print(f"live traffic: ~{rate:g} events/s from {len(active)} active customers; Ctrl-C stops", flush=True)
    try:
        with httpx.Client(timeout=10) as client:
            tick = 0
            while not stop.requested:
                tick += 1
                # A few customers per second, each sending one batch: like apps flushing their SDK queues.
                budget = max(1, round(rate))
                for p in rng.sample(active, min(len(active), max(1, budget // 10))):
                    batch = live_events(
                        rng, p, max(1, budget // max(1, budget // 10)), int(time.time() * 1000)
                    )
                    try:
                        response = client.post(
                            f"{ingest_url}/v1/batch",
                            json={"batch": batch},
                            headers={"Authorization": f"Bearer {keys[p.customer_id]}"},
                        )
                    except httpx.HTTPError as exc:
                        print(f"  ingest unreachable: {exc}", flush=True)
                        break
                    results = response.json().get("results", []) if response.content else []
                    ok = sum(1 for r in results if r.get("status") == "accepted")
                    sent += ok
                    refused += len(batch) - ok
                if tick % 30 == 0:
                    print(
                        f"  live: {sent} events accepted, {refused} refused (plan limits, rate limits)",
                        flush=True,
                    )
                deadline = started + tick
                while not stop.requested and time.monotonic() < deadline:
                    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    finally:
        signal.signal(signal.SIGINT, previous)
    print(f"\nstopped: {sent} live events accepted, {refused} refused", flush=True)


def where_to_look(token: str, state_file: Path, stack: StackSettings) -> str:
    def url(service: str, port: int) -> str:
        return f"http://{stack.host}:{stack.service_ports.get(service, port)}"

    return f"""
Where to look:
  CS dashboard        {url("health-score", 8084)}/
  analytics pages     {url("analytics", 8086)}/analytics/funnel  (and the other pages there)
  activation          PLG_OPERATOR_TOKEN={token} .venv/bin/plg activation suggest
  qualified leads     PLG_OPERATOR_TOKEN={token} .venv/bin/plg analytics pql  (page: /analytics/pql)
  billing             .venv/bin/plg billing reconcile
  customers           .venv/bin/plg customers list
The admin token and the customers' keys are in {state_file} (re-running `make demo` reuses them).
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--customers", type=int, default=300, help="demo customers (default 300)")
    p.add_argument("--days", type=int, default=90, help="days of history (default 90)")
    p.add_argument("--rate", type=float, default=30.0, help="live events per second (default 30)")
    p.add_argument("--seed", type=int, default=7, help="the generator's seed (same seed, same history)")
    p.add_argument("--history-only", action="store_true", help="import the history and stop")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.customers < 1 or args.days < ACTIVATION_DAYS + 1 or args.rate <= 0:
        print(f"make demo: --customers >= 1, --days >= {ACTIVATION_DAYS + 1} and --rate > 0", file=sys.stderr)
        return 2
    stack = StackSettings()
    ingest_url = f"http://{stack.host}:{stack.service_ports.get('ingest', 8080)}"
    state_file = _state_path(stack)
    # Whole days, so re-running the same day regenerates the same events (same ids: stored once).
    now_ms = int(time.time() * 1000)
    now_ms = now_ms // DAY_MS * DAY_MS + (now_ms % DAY_MS) // 3_600_000 * 3_600_000
    history = generate(args.customers, args.days, args.seed, now_ms)
    try:
        print(f"demo: {args.customers} customers, {args.days} days of history (seed {args.seed})", flush=True)
        keys, token = provision(stack.database_url, history.profiles, state_file)
        print(f"admin operator token ({ADMIN_NAME}): {token}", flush=True)
        upgraded, failed = upgrade_through_checkout(stack, history.profiles, token)
        print(f"upgrades through checkout and the Stripe emulator: {upgraded} customers moved", flush=True)
        for line in failed:
            print(f"  not upgraded: {line}", file=sys.stderr, flush=True)
        accepted, rejected = import_history(ingest_url, history, keys)
        print(f"history imported: {accepted} events accepted, {rejected} rejected", flush=True)
        if not args.history_only:
            live_traffic(ingest_url, history.profiles, keys, args.rate, args.seed)
    except httpx.HTTPError as exc:
        print(
            f"make demo: cannot reach ingest at {ingest_url} (is `make up` running?): {exc}", file=sys.stderr
        )
        return 1
    except DemoError as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        return 1
    print(where_to_look(token, state_file, stack))
    return 0


if __name__ == "__main__":
    sys.exit(main())
