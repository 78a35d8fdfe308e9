"""``plg privacy forget --customer C --person P``: erase a person everywhere plg keeps them.

In order, so that a crash half-way leaves nothing a re-run would not finish (every step is idempotent):

1. find every id of the person: ``P``, the anonymous ids identified as it and the user ids merged with it
   (``identity-links`` read to its end), and the pseudonyms enrichment made of them (``pii:...``, with
   ``ENRICHMENT_PII_KEY``);
2. PostgreSQL, one transaction: growth's onboarding progress and sticky assignments deleted, the person
   removed from the health score's daily facts, an audit row (without the ids) in ``privacy_erasures``;
3. tombstones for every ``identity-links`` key that names them (enrichment's view forgets the links);
4. the request on ``privacy-erasures`` (the person as salted hashes): running services forget what they
   hold in memory, growth tombstones the person's activation state on its changelog in its own
   transaction (docs/growth.md), and any later consumer (the analytics store) can follow it.

It needs an admin operator token in ``PLG_OPERATOR_TOKEN`` (``plg operators create NAME --role admin``).
Append-only topics are not rewritten: their retention ends the person's records there, and the report
says by when. docs/privacy.md has the whole list.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hmac
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg import sql

from services.enrichment.config import DEV_PII_KEY
from services.enrichment.pii import Scrubber
from services.kernel import apikeys
from services.kernel.kafka import Producer
from services.kernel.privacy import Erasure
from services.kernel.reading import read_to_end
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import (
    ACTIVATION_EVENTS,
    GROWTH_CHANGELOG,
    IDENTITY_LINKS,
    METERING_CHANGELOG,
    PRIVACY_ERASURES,
    USAGE_EVENTS,
    USAGE_EVENTS_DLQ,
    USAGE_EVENTS_ENRICHED,
    topic,
)

READ_TIMEOUT = 60.0


class PrivacyError(Exception):
    """A problem the operator can fix."""


OPERATOR_TOKEN_ENV = "PLG_OPERATOR_TOKEN"  # noqa: S105 - the variable's name, not a secret


def require_operator(conn: psycopg.Connection[Any], role: str = "admin", doing: str = "this") -> str:
    """The name of the operator whose token is in ``PLG_OPERATOR_TOKEN`` (from ``plg operators create``),
    if it is valid, not revoked and has ``role`` or higher; else PrivacyError. The environment only: a
    token on the command line would stay in the shell's history and the process list."""
    token = os.environ.get(OPERATOR_TOKEN_ENV, "").strip()
    if not token:
        raise PrivacyError(f"{doing} needs an {role} operator token in {OPERATOR_TOKEN_ENV}")
    parts = apikeys.split(token)
    if parts is None or parts[0] != apikeys.OPERATOR_PREFIX:
        raise PrivacyError(f"{OPERATOR_TOKEN_ENV} is not an operator token (plgop_<id>_<secret>)")
    record = apikeys.lookup_operator(conn, parts[1])
    if (
        record is None
        or record.revoked
        or not hmac.compare_digest(record.secret_sha256, apikeys.hash_secret(parts[2]))
    ):
        raise PrivacyError(f"{OPERATOR_TOKEN_ENV}: unknown, revoked or wrong operator token")
    if apikeys.ROLES.index(record.role) < apikeys.ROLES.index(role):
        raise PrivacyError(f"{doing} needs the {role} role; operator {record.name} is {record.role}")
    return record.name


def add_parser(groups: Any) -> None:
    privacy = groups.add_parser("privacy", help="erasure of a person (GDPR/CCPA)").add_subparsers(
        dest="command", required=True
    )
    forget = privacy.add_parser(
        "forget", help="erase a person of a customer everywhere plg keeps them (docs/privacy.md)"
    )
    forget.add_argument("--customer", required=True, help="the customer (tenant) id")
    forget.add_argument("--person", required=True, help="the person's user id (or anonymous id)")
    forget.add_argument(
        "--requested-by", help="who asked, kept in the audit row (default: the operator of the token)"
    )


@dataclass
class Place:
    """One place the person was kept, and what the command did there."""

    place: str
    kind: str  # postgres | compacted topic | service memory | append-only topic | billing state
    action: str  # deleted | tombstoned | announced | expires | kept
    count: int | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v != ""}


@dataclass
class Report:
    erasure_id: str
    customer_id: str
    ids: int
    places: list[Place] = field(default_factory=list)
    #: (table, column, rows) still holding one of the ids after the erasure: a table plg does not know.
    residual: list[tuple[str, str, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "erasure_id": self.erasure_id,
            "customer_id": self.customer_id,
            "ids_erased": self.ids,
            "places": [p.to_json() for p in self.places],
            "residual": [{"table": t, "column": c, "rows": n} for t, c, n in self.residual],
        }


@dataclass
class Identity:
    """What ``identity-links`` knows of a person: their ids and the keys that name them."""

    ids: set[str]
    keys: list[str]


def person_identity(
    kafka: KafkaSettings, registry: SchemaRegistrySettings, prefix: str, customer_id: str, person_id: str
) -> Identity:
    """Every id linked to ``person_id`` (identify links both ways, merges both ways, transitively) and the
    ``identity-links`` keys of those links, from the topic as it stands (the latest value per key)."""
    spec = topic(IDENTITY_LINKS, prefix)
    latest: dict[bytes, dict[str, Any] | None] = {}
    with SchemaRegistry(registry) as sr:
        decoder = sr.decoder(reader_schema=spec.schema_path)
        for record in read_to_end(kafka, spec.name, READ_TIMEOUT, "plg-cli-privacy"):
            key = record.key()
            if key is None or not key.startswith(f"{customer_id}|".encode()):
                continue
            raw = record.value()
            latest[key] = None if raw is None else decoder.decode(raw)
    links = [(k.decode(), v) for k, v in latest.items() if v is not None and v["customer_id"] == customer_id]
    ids = {person_id}
    changed = True
    while changed:  # a person's ids are a connected component of the link graph
        changed = False
        for _key, link in links:
            pair = {link["anonymous_id"], link["user_id"]}
            if pair & ids and not pair <= ids:
                ids |= pair
                changed = True
    keys = [k for k, link in links if {link["anonymous_id"], link["user_id"]} & ids]
    return Identity(ids, keys)


def pseudonyms(ids: Iterable[str], pii_key: str) -> set[str]:
    """Enrichment's pseudonyms of ``ids`` (the ``pii:...`` it writes for an id that looks like an e-mail or
    a phone number): the health score and growth may hold a person under those."""
    scrubber = Scrubber(pii_key.encode())
    out = set()
    for person in ids:
        text = person.strip()
        out.add(scrubber.pseudonym(text.lower() if "@" in text else text))
    return out


def erase_postgres(
    conn: psycopg.Connection[Any], customer_id: str, names: list[str], erasure: Erasure, report: Report
) -> None:
    """Every PostgreSQL row holding the person, in one transaction with the audit row."""
    with conn.transaction():
        cur = conn.cursor()
        cur.execute(
            "DELETE FROM growth_onboarding_progress WHERE customer_id = %s AND person_id = ANY(%s)",
            (customer_id, names),
        )
        report.places.append(Place("growth_onboarding_progress", "postgres", "deleted", cur.rowcount))
        # Onboarding completion actions (the ledger names the person) and flags set for the person by them.
        cur.execute(
            "DELETE FROM growth_onboarding_actions WHERE customer_id = %s AND person_id = ANY(%s)",
            (customer_id, names),
        )
        report.places.append(Place("growth_onboarding_actions", "postgres", "deleted", cur.rowcount))
        cur.execute(
            "DELETE FROM growth_flag_overrides WHERE customer_id = %s AND scope = 'person'"
            " AND subject_id = ANY(%s)",
            (customer_id, names),
        )
        report.places.append(Place("growth_flag_overrides", "postgres", "deleted", cur.rowcount))
        # Sticky keys are "<salt>|<attribute>|<value>" per customer (migration 0130); rows of before that
        # (customer_id '') were shared by every customer: an id another customer uses too loses that one.
        cur.execute(
            "DELETE FROM growth_sticky_assignments s USING unnest(%s::text[]) AS n(v)"
            " WHERE right(s.sticky_key, length(n.v) + 1) = '|' || n.v AND s.customer_id IN (%s, '')",
            (names, customer_id),
        )
        report.places.append(Place("growth_sticky_assignments", "postgres", "deleted", cur.rowcount))
        cur.execute(
            "UPDATE health_daily_facts"
            " SET facts = jsonb_set(facts, '{people}', (facts->'people') - %s::text[]), updated_at = now()"
            " WHERE customer_id = %s AND (facts->'people') ?| %s::text[]",
            (names, customer_id, names),
        )
        report.places.append(
            Place(
                "health_daily_facts", "postgres", "deleted", cur.rowcount, "the person's key actions per day"
            )
        )
        # Enriched events waiting for their customer's home scorer (several scorer instances,
        # docs/health-score.md): folded later they would put the person back into the daily facts.
        cur.execute(
            "DELETE FROM health_inbox WHERE customer_id = %s AND kind = 'event' AND ("
            " payload->>'person_id' = ANY(%s) OR payload->>'resolved_user_id' = ANY(%s)"
            " OR payload->>'user_id' = ANY(%s) OR payload->>'anonymous_id' = ANY(%s))",
            (customer_id, names, names, names, names),
        )
        report.places.append(
            Place("health_inbox", "postgres", "deleted", cur.rowcount, "their events waiting for the scorer")
        )
        report.places.append(
            Place(
                "privacy_erasures",
                "postgres",
                "kept",
                1,
                "this request's audit row: customer, time, what was erased where; no person id",
            )
        )
        cur.execute(
            "INSERT INTO privacy_erasures (erasure_id, customer_id, requested_by, ids_erased, report)"
            " VALUES (%s, %s, %s, %s, %s)",
            (
                erasure.erasure_id,
                customer_id,
                erasure.requested_by,
                report.ids,
                orjson.dumps(report.to_json()).decode(),
            ),
        )


def residual_rows(conn: psycopg.Connection[Any], names: list[str]) -> list[tuple[str, str, int]]:
    """Rows of any table in the database that still hold one of ``names`` (as a whole text value, an array
    element, or a JSON string): catches a table this command does not know yet (a new service's)."""
    columns = conn.execute(
        "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        " AND data_type IN ('text', 'character varying', 'jsonb', 'json', 'ARRAY')"
    ).fetchall()
    found = []
    for schema, table, column, kind in columns:
        ident = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        col = sql.Identifier(column)
        if kind in ("jsonb", "json"):
            query = sql.SQL(
                "SELECT count(*) FROM {t} WHERE EXISTS (SELECT 1 FROM unnest(%s::text[]) AS n(v)"
                " WHERE strpos({c}::text, to_json(n.v)::text) > 0)"
            ).format(t=ident, c=col)
        elif kind == "ARRAY":
            query = sql.SQL("SELECT count(*) FROM {t} WHERE {c}::text[] && %s::text[]").format(t=ident, c=col)
        else:
            query = sql.SQL("SELECT count(*) FROM {t} WHERE {c} = ANY(%s)").format(t=ident, c=col)
        try:
            with conn.transaction():
                n = conn.execute(query, (names,)).fetchone()
        except psycopg.Error:
            continue  # a column this check cannot compare (an array of another type): not ours to judge
        if n and n[0]:
            found.append((f"{schema}.{table}", column, int(n[0])))
    return found


def forget(
    conn: psycopg.Connection[Any],
    kafka: KafkaSettings,
    registry: SchemaRegistrySettings,
    prefix: str,
    customer_id: str,
    person_id: str,
    *,
    requested_by: str | None = None,
    pii_key: str | None = None,
) -> Report:
    if not customer_id.strip() or not person_id.strip():
        raise PrivacyError("--customer and --person must not be empty")
    identity = person_identity(kafka, registry, prefix, customer_id, person_id)
    key = pii_key if pii_key is not None else os.environ.get("ENRICHMENT_PII_KEY", DEV_PII_KEY)
    names = sorted(identity.ids | pseudonyms(identity.ids, key))
    erasure = Erasure.new(customer_id, names, requested_by=requested_by)
    report = Report(erasure.erasure_id, customer_id, len(identity.ids))

    erase_postgres(conn, customer_id, names, erasure, report)
    report.residual = residual_rows(conn, names)

    links = topic(IDENTITY_LINKS, prefix)
    requests = topic(PRIVACY_ERASURES, prefix)
    assert requests.schema_path is not None
    with SchemaRegistry(registry) as sr:
        encoder = sr.encoder(requests.value_subject, requests.schema_path, auto_register=False)
    producer = Producer(kafka, client_id="plg-cli-privacy")
    try:
        acks = [producer.send(links.name, None, k) for k in identity.keys]
        for ack in acks:
            ack.result(timeout=60)
        report.places.append(
            Place(
                IDENTITY_LINKS,
                "compacted topic",
                "tombstoned",
                len(identity.keys),
                "identify and merge links; enrichment's identity graph forgets them",
            )
        )
        producer.send(requests.name, encoder.encode(erasure.record()), customer_id).result(timeout=60)
    finally:
        producer.close()
    report.places += [
        Place(
            GROWTH_CHANGELOG,
            "compacted topic",
            "announced",
            None,
            "growth tombstones the person's activation counts and crossings in its own transaction",
        ),
        Place(
            "service memory",
            "service memory",
            "announced",
            None,
            f"{PRIVACY_ERASURES}: enrichment (identity graph, scrub cache), growth (sticky cache, activation "
            "view), health score (facts, live events) forget the person",
        ),
        Place(
            "analytics store",
            "service store",
            "announced",
            None,
            f"the analytics service deletes the person's events from its store on {PRIVACY_ERASURES}",
        ),
    ]
    until = dt.datetime.fromtimestamp(erasure.requested_at / 1000, dt.UTC)
    for name, what in (
        (USAGE_EVENTS, "raw events (metered and billed before; never rewritten)"),
        (USAGE_EVENTS_ENRICHED, "enriched events"),
        (USAGE_EVENTS_DLQ, "dead letters (their payload is encrypted: docs/privacy.md)"),
        (ACTIVATION_EVENTS, "activation crossings"),
    ):
        retention = topic(name, prefix).retention_ms
        gone = (
            (until + dt.timedelta(milliseconds=retention)).isoformat(timespec="seconds") if retention else "-"
        )
        report.places.append(Place(name, "append-only topic", "expires", None, f"{what}; gone by {gone}"))
    report.places.append(
        Place(
            METERING_CHANGELOG,
            "billing state",
            "kept",
            None,
            "user ids counted by UNIQUE_COUNT meters (active_users) stay in the open billing windows until "
            "they close: a billing record (GDPR art. 17(3)(b)); billed quantities never change",
        )
    )
    return report


def run(args: argparse.Namespace, conn: psycopg.Connection[Any], prefix: str) -> int:
    operator = require_operator(conn, "admin", "plg privacy forget")
    report = forget(
        conn,
        KafkaSettings(),
        SchemaRegistrySettings(),
        prefix,
        args.customer,
        args.person,
        requested_by=args.requested_by or operator,
    )
    doc = report.to_json()
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(
        f"erased person of {report.customer_id} ({report.ids} id(s)); request {report.erasure_id} "
        f"on {PRIVACY_ERASURES}"
    )
    width = max(len(p.place) for p in report.places)
    for p in report.places:
        count = "" if p.count is None else f" {p.count}"
        print(f"  {p.place.ljust(width)}  {p.action}{count}  {p.detail}".rstrip())
    for table, column, rows in report.residual:
        print(
            f"warning: {table}.{column} still holds one of the person's ids in {rows} row(s): "
            "a table this command does not know; erase it there",
            file=sys.stderr,
        )
    return 0
