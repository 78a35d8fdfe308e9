"""``plg``: manage customers (tenants), their API keys and operator tokens in PostgreSQL (``DATABASE_URL``).

    plg customers create <id> --plan <plan> [--name N] [--anchor-day D] [--stripe-customer-id X | --stripe]
    plg customers list | show <id>
    plg keys create <customer-id> [--publishable [--origin URL]...] [--description D]   # printed once
    plg keys list <customer-id>
    plg keys revoke <key-id>
    plg operators create <name> --role viewer|editor|admin   # prints the token once: it is not stored
    plg operators list | revoke <name-or-id>
    plg customers update <id> [--support-tier T] [--csm NAME | --no-csm] [--billing-status S]
        [--tax-region R] [--tax-exempt yes|no] [--tax-id ID]     # tax: plg's invoice and Stripe
    plg customers suspend <id> --reason R [--hours H] | unsuspend <id> [--exempt-hours H]
    plg customers cost [--plan P] [--cpu-us-per-event US]
    plg tickets open <customer-id> <subject> [--priority P] | close <customer-id> [<ticket-id>...|--all]
    plg tickets list <customer-id> [--all]
    plg dlq list [--reason R] [--since T] | show <[partition:]offset> [--reveal] | replay [--reason R]
        [--since T]
    plg identity merge <customer-id> <merged-user-id> <survivor-user-id>
    plg privacy forget --customer C --person P [--requested-by NAME]   # erasure: docs/privacy.md
    plg billing sync-catalog | sync-meters | reconcile [--customer C] [--period YYYY-MM] [--no-stripe] [--all]
    plg billing preview <customer-id> --plan P [--version V] [--period YYYY-MM]
    plg billing simulate --price-book FILE [--period YYYY-MM]
    plg analytics funnel --steps a,b,c [--customer C] [--window 7d] [--breakdown plan] [--format json]
    plg analytics retention | north-star | activation | timeline <customer-id>   (PLG_OPERATOR_TOKEN)
    plg analytics pql [--window 14d] [--format json]   (product-qualified leads with their evidence)
    plg plan codegen --lang ts|python [--out DIR] | check FILE.json   # typed events, the app's CI check
    plg activation suggest [--since 90d] [--within 14d] [--retained-after 30d] [--churn-event E]
    plg health backtest [--since 180d] [--horizon 30d] [--rescore [--config health.yaml] [--every 7d]]
        (scores vs later churn: ROC AUC, red precision; --rescore scores past weeks from the store)
    plg import FILE [--url URL]   (PLG_API_KEY: the customer's secret key; history, never billed)

Add ``--json`` before the command for machine-readable output. Migrations are applied first (idempotent),
so the CLI works on a fresh database. Plan names are checked against the meters-and-plans config
(``PLG_METERING_CONFIG``, default ``deploy/config/metering.yaml``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import orjson
import psycopg

from services.analytics.model import QueryError
from services.cli import analytics, billing, identity, importing, metering, plan, privacy, tax
from services.cli import dlq as dead_letters
from services.customers import store
from services.enrichment import store as success
from services.kernel import apikeys
from services.kernel.db import migrate
from services.kernel.dlq import DlqCipher
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import DatabaseSettings, KafkaSettings, PlatformSettings, SchemaRegistrySettings


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 1."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plg", description="Manage plg customers, their API keys and operator tokens."
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument(
        "--database-url",
        help="PostgreSQL URL without a password (default: $DATABASE_URL); credentials come from the "
        "environment only: DATABASE_URL or PGPASSWORD / ~/.pgpass",
    )
    groups = p.add_subparsers(dest="group", required=True)

    customers = groups.add_parser("customers", help="tenants").add_subparsers(dest="command", required=True)
    create = customers.add_parser("create", help="create a customer")
    create.add_argument("customer_id")
    create.add_argument("--plan", required=True, help="plan slug from the meters-and-plans config")
    create.add_argument("--name")
    create.add_argument("--anchor-day", type=int, default=1, help="billing anchor day of month (1-31)")
    create.add_argument("--stripe-customer-id")
    create.add_argument("--stripe", action="store_true", help="create the Stripe customer and link it")
    create.add_argument(
        "--no-plan-check", action="store_true", help="accept a plan the config does not (yet) list"
    )
    customers.add_parser("list", help="list customers")
    show = customers.add_parser("show", help="one customer and its keys")
    show.add_argument("customer_id")
    update = customers.add_parser("update", help="change the customer-success context and tax settings")
    update.add_argument("customer_id")
    update.add_argument("--support-tier", help="e.g. standard, gold, premium")
    csm = update.add_mutually_exclusive_group()
    csm.add_argument("--csm", help="the customer-success manager who owns the account")
    csm.add_argument("--no-csm", action="store_true", help="remove the CSM owner")
    update.add_argument("--billing-status", choices=success.BILLING_STATUSES)
    tax.add_arguments(update)
    metering.add_parsers(customers)

    tickets = groups.add_parser("tickets", help="support tickets").add_subparsers(
        dest="command", required=True
    )
    topen = tickets.add_parser("open", help="open a support ticket")
    topen.add_argument("customer_id")
    topen.add_argument("subject")
    topen.add_argument("--priority", choices=success.PRIORITIES, default="normal")
    tclose = tickets.add_parser("close", help="close tickets (by id, or --all open ones)")
    tclose.add_argument("customer_id")
    tclose.add_argument("ticket_ids", nargs="*", type=int)
    tclose.add_argument("--all", action="store_true", help="close every open ticket of the customer")
    tlist = tickets.add_parser("list", help="a customer's open tickets")
    tlist.add_argument("customer_id")
    tlist.add_argument("--all", action="store_true", help="closed ones too")

    dlq = groups.add_parser("dlq", help="dead letters (usage-events-dlq)").add_subparsers(
        dest="command", required=True
    )
    dlist = dlq.add_parser("list", help="list dead letters, oldest first")
    dshow = dlq.add_parser("show", help="one dead letter in full")
    dshow.add_argument("position", help="<partition>:<offset>, or <offset> if only one partition has it")
    dshow.add_argument(
        "--reveal",
        action="store_true",
        help="decrypt and show the original key and value (personal data): needs an admin operator token "
        "in PLG_OPERATOR_TOKEN and the services' PLG_DLQ_KEY",
    )
    dreplay = dlq.add_parser("replay", help="re-produce dead letters to their source topic (idempotent)")
    for sub in (dlist, dreplay):
        sub.add_argument("--reason", help="only this error code, e.g. late_event")
        sub.add_argument("--since", help="failed at or after: 90s, 15m, 2h, 7d or an ISO 8601 time")
    dreplay.add_argument("--force", action="store_true", help="also re-produce letters replayed before")

    identity = groups.add_parser("identity", help="identity graph (enrichment)").add_subparsers(
        dest="command", required=True
    )
    imerge = identity.add_parser("merge", help="two user ids of a tenant are one person")
    imerge.add_argument("customer_id")
    imerge.add_argument("merged_id", help="the user id merged away")
    imerge.add_argument("survivor_id", help="the user id that survives")

    billing.add_parser(groups)
    privacy.add_parser(groups)
    analytics.add_parser(groups)
    plan.add_parser(groups)
    analytics.add_activation_parser(groups)
    analytics.add_health_parser(groups)
    importing.add_parser(groups)

    keys = groups.add_parser("keys", help="ingest API keys").add_subparsers(dest="command", required=True)
    kcreate = keys.add_parser("create", help="create a key and print it (once)")
    kcreate.add_argument("customer_id")
    kcreate.add_argument("--description")
    kcreate.add_argument(
        "--publishable",
        action="store_true",
        help="a publishable key (safe in a browser: events, flags, own entitlements and onboarding only)",
    )
    kcreate.add_argument(
        "--origin",
        action="append",
        dest="origins",
        metavar="URL",
        help="a browser origin allowed to use the publishable key (CORS); repeat for several",
    )
    klist = keys.add_parser("list", help="list a customer's keys (ids only; secrets are never stored)")
    klist.add_argument("customer_id")
    krevoke = keys.add_parser("revoke", help="revoke a key (ingest refuses it within its cache TTL)")
    krevoke.add_argument("key_id")

    ops = groups.add_parser("operators", help="operator tokens (CS team, admins, internal callers)")
    operators = ops.add_subparsers(dest="command", required=True)
    ocreate = operators.add_parser("create", help="create an operator token and print it (once)")
    ocreate.add_argument("name", help="who: an e-mail address or a service name (audit rows show it)")
    ocreate.add_argument("--role", required=True, choices=apikeys.ROLES)
    operators.add_parser("list", help="list operators (ids only; tokens are never stored)")
    orevoke = operators.add_parser("revoke", help="revoke an operator's token (refused within the cache TTL)")
    orevoke.add_argument("name_or_id")
    return p


def _has_password(conninfo: str) -> bool:
    """True when a libpq URL or keyword string holds a password."""
    try:
        return bool(psycopg.conninfo.conninfo_to_dict(conninfo).get("password"))
    except psycopg.ProgrammingError:
        return "password" in conninfo.lower() or "@" in conninfo  # unparsable: refuse what may hold one


def _check_plan(plan: str) -> None:
    from services.plans.loader import ConfigError, load_config

    if not plan.strip():
        raise CliError("the plan name must not be empty")
    try:
        config = load_config()
    except ConfigError as exc:
        raise CliError(f"cannot check the plan: {exc}\n(use --no-plan-check to skip the check)") from None
    if config.plan(plan) is None:
        known = ", ".join(p.slug for p in config.plans)
        raise CliError(f"unknown plan {plan!r}; the config has: {known}")


def _jsonable(obj: Any) -> Any:
    return asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj


def _print(args: argparse.Namespace, rows: Sequence[Any], columns: Sequence[str]) -> None:
    if args.json:
        sys.stdout.write(
            orjson.dumps([_jsonable(r) for r in rows], option=orjson.OPT_INDENT_2).decode() + "\n"
        )
        return
    table = [[_cell(getattr(r, c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in table]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if hasattr(value, "isoformat"):
        return str(value.isoformat(timespec="seconds"))
    return str(value)


_CUSTOMER_COLS = ("customer_id", "plan", "name", "billing_anchor_day", "stripe_customer_id", "created_at")
_KEY_COLS = ("key_id", "customer_id", "kind", "description", "created_at", "revoked_at")
_OPERATOR_COLS = ("operator_id", "name", "role", "created_at", "revoked_at")


def run(args: argparse.Namespace) -> int:
    if args.group == "plan":  # files and (optionally) the registry: no database
        try:
            return plan.run(args)
        except plan.PlanCliError as exc:
            raise CliError(str(exc)) from None
    if args.group == "identity":
        return _identity(args)
    if args.group == "import":  # through ingest's HTTP API, as the customer's key: no database
        try:
            return importing.run(args)
        except importing.ImportFailed as exc:
            raise CliError(str(exc)) from None
    if args.group == "health":  # daily scores from PostgreSQL, activity from the analytics service
        try:
            with psycopg.connect(args.database_url or DatabaseSettings().url.get_secret_value()) as conn:
                return analytics.run_backtest(args, conn)
        except (analytics.AnalyticsCliError, QueryError) as exc:
            raise CliError(str(exc)) from None
        except psycopg.OperationalError as exc:
            raise CliError(f"cannot reach PostgreSQL at DATABASE_URL: {exc}".strip()) from None
    if args.group in ("analytics", "activation"):  # asks the analytics service over HTTP: no database
        try:
            return analytics.run(args)
        except analytics.AnalyticsCliError as exc:
            raise CliError(str(exc)) from None
    if args.database_url and _has_password(args.database_url):
        # A flag is visible to every user of the machine (ps, /proc) and stays in the shell's history.
        raise CliError(
            "--database-url must not carry a password (it would show in ps and the shell history): put it "
            "in DATABASE_URL, PGPASSWORD or ~/.pgpass and leave it out of the flag"
        )
    url = args.database_url or DatabaseSettings().url.get_secret_value()
    if args.group == "customers" and args.command == "create" and not args.no_plan_check:
        _check_plan(args.plan)
    if args.group == "tickets" and args.command == "close" and bool(args.ticket_ids) == bool(args.all):
        raise CliError("give the ticket ids to close, or --all")
    try:
        migrate(url)
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        raise CliError(f"cannot reach PostgreSQL at DATABASE_URL: {exc}".strip()) from None
    with conn:
        try:
            return _dispatch(args, conn)
        except store.StoreError as exc:
            raise CliError(str(exc)) from None


def _dispatch(args: argparse.Namespace, conn: psycopg.Connection[Any]) -> int:
    if args.group == "billing":
        return billing.run(args, conn)
    if args.group == "privacy":
        return _privacy(args, conn)
    if args.group == "tickets":
        return _tickets(args, conn)
    if args.group == "dlq":
        return _dlq(args, conn)
    if args.group == "operators":
        return _operators(args, conn)
    if args.group == "customers" and args.command in metering.COMMANDS:
        try:
            return metering.run(args, conn)
        except metering.Refused as exc:
            raise CliError(str(exc)) from None
    if args.group == "customers" and args.command == "update" and tax.given(args):
        taxed = tax.run(args, conn)
        cs_given = args.support_tier or args.csm or args.no_csm or args.billing_status
        if not cs_given:
            _print(args, [taxed], tax.COLUMNS)
            return 0
    if args.group == "customers" and args.command == "update":
        store.update_success_context(
            conn,
            args.customer_id,
            support_tier=args.support_tier,
            csm_owner=args.csm,
            clear_csm=args.no_csm,
            billing_status=args.billing_status,
        )
        _print(args, [success.get_context(conn, args.customer_id)], _CONTEXT_COLS)
        return 0
    if args.group == "customers":
        if args.command == "create":
            stripe_id = args.stripe_customer_id
            if args.stripe and stripe_id is None:
                stripe_id = billing.create_stripe_customer(args.customer_id, args.name)
            customer = store.create_customer(
                conn,
                args.customer_id,
                args.plan,
                name=args.name,
                billing_anchor_day=args.anchor_day,
                stripe_customer_id=stripe_id,
            )
            _print(args, [customer], _CUSTOMER_COLS)
        elif args.command == "list":
            _print(args, store.list_customers(conn), _CUSTOMER_COLS)
        elif args.command == "show":
            found = store.get_customer(conn, args.customer_id)
            if found is None:
                raise CliError(f"no customer {args.customer_id!r}")
            if args.json:
                keys = apikeys.list_keys(conn, found.customer_id)
                doc = {**asdict(found), "keys": [asdict(k) for k in keys]}
                sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
            else:
                _print(args, [found], _CUSTOMER_COLS)
                print()
                _print(args, apikeys.list_keys(conn, found.customer_id), _KEY_COLS)
        return 0
    if args.command == "create":
        if args.origins and not args.publishable:
            raise CliError("--origin is for publishable keys (browsers): add --publishable")
        for origin in args.origins or ():
            _check_origin(origin)
        key, token = apikeys.create_key(
            conn,
            args.customer_id,
            args.description,
            kind="publishable" if args.publishable else "secret",
            allowed_origins=args.origins,
        )
        if args.json:
            sys.stdout.write(orjson.dumps({**asdict(key), "key": token}).decode() + "\n")
        else:
            print(token)
            print(
                f"key id {key.key_id} for customer {key.customer_id}: store this key now; plg keeps only "
                "its hash and cannot show it again.",
                file=sys.stderr,
            )
    elif args.command == "list":
        if store.get_customer(conn, args.customer_id) is None:
            raise CliError(f"no customer {args.customer_id!r}")
        _print(args, apikeys.list_keys(conn, args.customer_id), _KEY_COLS)
    elif args.command == "revoke":
        revoked = apikeys.revoke_key(conn, args.key_id)
        if revoked is None:
            raise CliError(f"no API key {args.key_id!r}")
        _print(args, [revoked], _KEY_COLS)
    return 0


def _check_origin(origin: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(origin)
    bad_shape = parts.path not in ("", "/") or parts.query or parts.fragment
    if parts.scheme not in ("http", "https") or not parts.netloc or bad_shape:
        raise CliError(
            f"--origin {origin!r}: an origin is scheme://host[:port], e.g. https://app.example.com"
        )


def _operators(args: argparse.Namespace, conn: psycopg.Connection[Any]) -> int:
    if args.command == "create":
        row, token = apikeys.create_operator(conn, args.name, args.role)
        if args.json:
            sys.stdout.write(orjson.dumps({**asdict(row), "token": token}).decode() + "\n")
        else:
            print(token)
            print(
                f"operator {row.name} ({row.role}), token id {row.operator_id}: store this token now; plg "
                "keeps only its hash and cannot show it again. Send it as 'Authorization: Bearer <token>'.",
                file=sys.stderr,
            )
    elif args.command == "list":
        _print(args, apikeys.list_operators(conn), _OPERATOR_COLS)
    else:
        revoked = apikeys.revoke_operator(conn, args.name_or_id)
        if not revoked:
            raise CliError(f"no active operator {args.name_or_id!r}")
        _print(args, revoked, _OPERATOR_COLS)
    return 0


_CONTEXT_COLS = ("customer_id", "plan", "support_tier", "csm_owner", "billing_status", "open_tickets")
_TICKET_COLS = ("ticket_id", "customer_id", "status", "priority", "subject", "opened_at", "closed_at")
_LETTER_COLS = (
    "position",
    "failed_at",
    "service",
    "reason",
    "path",
    "event_id",
    "customer_id",
    "source",
    "message",
)


def _tickets(args: argparse.Namespace, conn: psycopg.Connection[Any]) -> int:
    if args.command == "open":
        _print(args, [success.open_ticket(conn, args.customer_id, args.subject, args.priority)], _TICKET_COLS)
    elif args.command == "close":
        closed = success.close_tickets(conn, args.customer_id, None if args.all else args.ticket_ids)
        _print(args, closed, _TICKET_COLS)
    else:
        _print(args, success.list_tickets(conn, args.customer_id, include_closed=args.all), _TICKET_COLS)
    return 0


class _Row:
    """A dict as the attribute row ``_print`` expects."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _dlq(args: argparse.Namespace, conn: psycopg.Connection[Any]) -> int:
    kafka, registry = KafkaSettings(), SchemaRegistrySettings()
    letters = dead_letters.DeadLetters(kafka, registry, PlatformSettings().topic_prefix)
    try:
        if args.command == "show":
            letter = letters.find(args.position)
            if not args.reveal:
                doc = dead_letters.shown(letter, None)
            else:
                try:
                    privacy.require_operator(conn, "admin", "plg dlq show --reveal")
                except privacy.PrivacyError as exc:
                    raise CliError(str(exc)) from None
                with SchemaRegistry(registry) as sr:
                    doc = dead_letters.shown(letter, DlqCipher.from_env(), sr.decoder().decode)
            sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
            return 0
        since = dead_letters.parse_since(args.since) if args.since else None
        found = letters.read(args.reason, since)
        if args.command == "list":
            rows = [_Row(letter.summary()) for letter in found]
            if args.json:
                sys.stdout.write(
                    orjson.dumps([r.__dict__ for r in rows], option=orjson.OPT_INDENT_2).decode() + "\n"
                )
            else:
                _print(args, rows, _LETTER_COLS)
            return 0
        report = dead_letters.replay(found, letters.topic, kafka, conn, force=args.force)
    except dead_letters.DlqError as exc:
        raise CliError(str(exc)) from None
    doc = report.to_json()
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(
            f"replayed {doc['replayed']} dead letter(s) to {doc['to_topics'] or 'no topic'}; "
            f"skipped {doc['already_replayed']} replayed before (--force replays them again) and "
            f"{doc['not_replayable']} without original bytes"
        )
        for outcome, reasons in doc["by_reason"].items():
            for reason, n in sorted(reasons.items()):
                print(f"  {outcome:16} {reason:24} {n}")
    return 0


def _privacy(args: argparse.Namespace, conn: psycopg.Connection[Any]) -> int:
    try:
        return privacy.run(args, conn, PlatformSettings().topic_prefix)
    except privacy.PrivacyError as exc:
        raise CliError(str(exc)) from None


def _identity(args: argparse.Namespace) -> int:
    try:
        link = identity.merge(
            KafkaSettings(),
            SchemaRegistrySettings(),
            PlatformSettings().topic_prefix,
            args.customer_id,
            args.merged_id,
            args.survivor_id,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        sys.stdout.write(orjson.dumps(link).decode() + "\n")
    else:
        print(
            f"merged {args.merged_id} into {args.survivor_id} of {args.customer_id} (link {link['event_id']})"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except CliError as exc:
        print(f"plg: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
