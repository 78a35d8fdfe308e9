"""``plg plan``: typed events from the tracking plan, and the check an app's CI runs on sample events.

    plg plan codegen --lang ts|python [--out DIR] [--plan FILE] [--registry URL]
    plg plan check FILE.json [--plan FILE]

The tracking plan (``deploy/config/tracking-plan.yaml``, ``$PLG_TRACKING_PLAN``) is the source of truth for
event names and properties; the ``usage-events`` Avro schema (the registry's latest version when a registry
is given or ``SCHEMA_REGISTRY_URL`` is set, else ``schemas/usage_event.avsc``, what is registered) decides
how a property travels. Code generation refuses a plan the schema cannot carry — a property type its
``properties`` map has no branch for, a missing ``name``/``properties`` field — so generated types never
promise what ingest would refuse. ``check`` judges events with the same compiled rules enrichment runs
(services/enrichment/validation.py) and treats every violation, flagged or enforced, as a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import httpx

from services.enrichment.plan import PlanError, PropertySpec, PropertyType, TrackingPlan, load_plan
from services.enrichment.validation import compile_plan

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "usage_event.avsc"
SUBJECT = "usage-events-value"
TS_FILE = "plg-events.ts"
PY_FILE = "plg_events.py"

# Avro branch of the properties map each plan type travels as.
_AVRO_OF = {
    PropertyType.STRING: "string",
    PropertyType.INTEGER: "long",
    PropertyType.NUMBER: "double",
    PropertyType.BOOLEAN: "boolean",
}


class PlanCliError(Exception):
    """A user-facing failure of ``plg plan``: the message says what to fix."""


def add_parser(groups: Any) -> None:
    plan = groups.add_parser("plan", help="typed events from the tracking plan; check sample events")
    commands = plan.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("codegen", help="event types for an app (TypeScript or Python)")
    gen.add_argument("--lang", choices=("ts", "python"), required=True)
    gen.add_argument("--out", help=f"directory to write {TS_FILE} / {PY_FILE} into (default: stdout)")
    gen.add_argument(
        "--plan", dest="plan_file", help="tracking plan (default $PLG_TRACKING_PLAN or the repo's)"
    )
    gen.add_argument(
        "--registry",
        help="schema registry to cross-check with (default $SCHEMA_REGISTRY_URL, else the repo's .avsc)",
    )
    check = commands.add_parser(
        "check", help="validate sample events (JSON) against the plan; exit 1 if any fail"
    )
    check.add_argument("file", help='a JSON event, an array of events, or {"batch": [...]}')
    check.add_argument(
        "--plan", dest="plan_file", help="tracking plan (default $PLG_TRACKING_PLAN or the repo's)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        plan = load_plan(args.plan_file)
    except PlanError as exc:
        raise PlanCliError(str(exc)) from None
    if args.command == "check":
        return check(plan, Path(args.file))
    registry = args.registry or os.environ.get("SCHEMA_REGISTRY_URL")
    schema, source = usage_event_schema(registry)
    problems = cross_check(plan, schema)
    if problems:
        raise PlanCliError(
            f"the tracking plan does not fit the usage-events schema ({source}):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    text = typescript(plan) if args.lang == "ts" else python(plan)
    if not args.out:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / (TS_FILE if args.lang == "ts" else PY_FILE)
    target.write_text(text)
    print(f"wrote {target} ({len(planned_events(plan))} events; cross-checked with {source})")
    return 0


# -- the schema ------------------------------------------------------------------------------------------


def usage_event_schema(registry: str | None) -> tuple[dict[str, Any], str]:
    """The usage-events value schema: the registry's latest version, or the repository's file."""
    if not registry:
        return json.loads(SCHEMA_FILE.read_text()), str(SCHEMA_FILE.name)
    url = f"{registry.rstrip('/')}/subjects/{SUBJECT}/versions/latest"
    try:
        response = httpx.get(url, timeout=10)
    except httpx.HTTPError as exc:
        raise PlanCliError(f"cannot reach the schema registry at {registry}: {exc}") from None
    if response.status_code != 200:
        raise PlanCliError(
            f"the schema registry answered {response.status_code} for {SUBJECT}: {response.text[:200]}"
        )
    body = response.json()
    return json.loads(body["schema"]), f"{registry} {SUBJECT} v{body.get('version')}"


def _branches(avro_type: Any) -> set[str]:
    if isinstance(avro_type, list):
        return {b if isinstance(b, str) else b.get("type", "") for b in avro_type}
    return {avro_type if isinstance(avro_type, str) else avro_type.get("type", "")}


def cross_check(plan: TrackingPlan, schema: dict[str, Any]) -> list[str]:
    """What in the plan the schema cannot carry (empty when everything fits)."""
    fields = {f["name"]: f["type"] for f in schema.get("fields", [])}
    problems = [f"the schema has no {name!r} field" for name in ("name", "properties") if name not in fields]
    if problems:
        return problems
    props = fields["properties"]
    if not (isinstance(props, dict) and props.get("type") == "map"):
        return ["the schema's properties field is not a map"]
    carried = _branches(props["values"])
    for event, spec in planned_events(plan).items():
        for prop, p in spec.properties.items():
            if _AVRO_OF[p.type] not in carried:
                problems.append(
                    f"events.{event}.properties.{prop}: {p.type.value} needs an Avro "
                    f"{_AVRO_OF[p.type]} branch "
                    f"in the properties map, which has {sorted(carried)}"
                )
    return problems


def planned_events(plan: TrackingPlan) -> dict[str, Any]:
    """The events an app tracks by name: not plg's own (``$identify`` is what identify() sends)."""
    return {name: spec for name, spec in plan.events.items() if not name.startswith("$")}


# -- code generation ------------------------------------------------------------------------------------


def _pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part)


def _header(plan: TrackingPlan, comment: str, lang: str) -> str:
    return (
        f"{comment} Generated by `plg plan codegen --lang {lang}` from the tracking plan "
        f"(version {plan.version}, {plan.effective_date}).\n"
        f"{comment} Do not edit: change deploy/config/tracking-plan.yaml and generate again.\n"
    )


def _ts_type(p: PropertySpec) -> str:
    if p.enum is not None:
        return " | ".join(json.dumps(v) for v in p.enum)
    return {"string": "string", "integer": "number", "number": "number", "boolean": "boolean"}[p.type.value]


def _doc(spec: PropertySpec) -> str:
    bits = [spec.description.rstrip(".")] if spec.description else []
    if spec.type is PropertyType.INTEGER:
        bits.append("a whole number")
    if spec.min is not None:
        bits.append(f"min {spec.min:g}")
    if spec.max is not None:
        bits.append(f"max {spec.max:g}")
    if spec.pii:
        bits.append("PII: pseudonymised by plg")
    return "; ".join(bits)


def plan_versions(plan: TrackingPlan) -> dict[str, int]:
    """Each event's current schema version in the plan, ``$identify`` included (identify() sends it)."""
    return {name: spec.schema_version for name, spec in plan.events.items()}


def typescript(plan: TrackingPlan) -> str:
    events = planned_events(plan)
    versions = plan_versions(plan)
    out = [_header(plan, "//", "ts"), "", "export type PropertyValue = string | number | boolean | null;", ""]
    out.append(
        "/** The tracking plan's versions: `trackEvent` stamps each event's version in `versionProperty`, "
        "and so does every `plg.track` once `plg.init({ ..., plan: TRACKING_PLAN })` is given them. */"
    )
    out.append("export const TRACKING_PLAN = {")
    out.append(f"  version: {plan.version},")
    out.append(f"  versionProperty: {json.dumps(plan.version_property)},")
    out.append("  events: {")
    for name, version in versions.items():
        out.append(f"    {json.dumps(name)}: {version},")
    out.append("  } as Record<string, number>,")
    out.append("};")
    out.append("")
    for name, spec in events.items():
        if spec.description:
            out.append(f"/** {spec.description} */")
        out.append(f"export interface {_pascal(name)}Properties {{")
        for prop, p in spec.properties.items():
            doc = _doc(p)
            if doc:
                out.append(f"  /** {doc} */")
            optional = "" if p.required else "?"
            out.append(f"  {json.dumps(prop) if not prop.isidentifier() else prop}{optional}: {_ts_type(p)};")
        if spec.additional_properties:
            out.append("  [property: string]: PropertyValue | undefined;")
        out.append("}")
        out.append("")
    out.append("/** Every planned event name -> its properties. */")
    out.append("export interface PlgEvents {")
    for name in events:
        out.append(f"  {json.dumps(name)}: {_pascal(name)}Properties;")
    out.append("}")
    out.append("")
    out.append("export type PlgEventName = keyof PlgEvents;")
    out.append("")
    out.append(
        "/** What `trackEvent` needs of the client: `plg` from @plg/sdk (or the Python-less test double). */"
    )
    out.append("export interface Tracker {")
    out.append(
        "  track(name: string, properties?: Record<string, PropertyValue | undefined>): string | null;"
    )
    out.append("}")
    out.append("")
    out.append(
        "/** `plg.track`, type-checked against the tracking plan (a wrong name or property does not "
        "compile), with the event's plan version stamped. */"
    )
    out.append(
        "export function trackEvent<K extends PlgEventName>(\n"
        "  client: Tracker,\n  name: K,\n  properties: PlgEvents[K],\n): string | null {"
    )
    out.append("  return client.track(name, {")
    out.append("    ...(properties as unknown as Record<string, PropertyValue | undefined>),")
    out.append("    [TRACKING_PLAN.versionProperty]: TRACKING_PLAN.events[name],")
    out.append("  });")
    out.append("}")
    out.append("")
    return "\n".join(out)


def _py_type(p: PropertySpec) -> str:
    if p.enum is not None:
        return f"Literal[{', '.join(repr(v) for v in p.enum)}]"
    return {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}[p.type.value]


def python(plan: TrackingPlan) -> str:
    events = planned_events(plan)
    out = [
        _header(plan, "#", "python"),
        '"""Typed events for plg_sdk.Client.track: a TypedDict per event, a typed ``track`` for mypy."""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any, Literal, Protocol, TypedDict, overload",
        "",
        "",
        "class Tracker(Protocol):",
        "    def track(self, name: str, properties: Any = ..., /) -> str: ...",
        "",
        "",
        "#: The tracking plan's versions: ``track`` stamps each event's version in ``version_property``,",
        "#: and so does every ``Client.track`` of a ``plg_sdk.Client(..., plan=TRACKING_PLAN)``.",
        "TRACKING_PLAN: dict[str, Any] = {",
        f'    "version": {plan.version},',
        f'    "version_property": {plan.version_property!r},',
        '    "events": {',
        *(f"        {name!r}: {version}," for name, version in plan_versions(plan).items()),
        "    },",
        "}",
        "",
        "",
    ]
    for name, spec in events.items():
        cls = _pascal(name) + "Properties"
        required = {k: p for k, p in spec.properties.items() if p.required}
        optional = {k: p for k, p in spec.properties.items() if not p.required}
        bad = [k for k in spec.properties if not k.isidentifier()]
        if bad:
            # Functional syntax for names that are not identifiers.
            fields = ", ".join(f"{k!r}: {_py_type(p)}" for k, p in spec.properties.items())
            out.append(f"{cls} = TypedDict({cls!r}, {{{fields}}}, total=False)")
            out.extend(["", ""])
            continue
        out.append(f"class _{cls}Required(TypedDict):")
        out.append(f'    """{spec.description or name}"""')
        for k, p in required.items():
            doc = _doc(p)
            out.append(f"    {k}: {_py_type(p)}" + (f"  # {doc}" if doc else ""))
        out.extend(["", ""])
        out.append(f"class {cls}(_{cls}Required, total=False):")
        out.append(f'    """{name}: optional properties."""')
        for k, p in optional.items():
            doc = _doc(p)
            out.append(f"    {k}: {_py_type(p)}" + (f"  # {doc}" if doc else ""))
        out.extend(["", ""])
    names = list(events)
    out.append(f"EventName = Literal[{', '.join(repr(n) for n in names)}]")
    out.append("")
    out.append("#: Each planned event's properties type.")
    out.append("EVENTS: dict[str, type] = {")
    for name in names:
        out.append(f"    {name!r}: {_pascal(name)}Properties,")
    out.append("}")
    out.extend(["", ""])
    for name in names:
        out.append("@overload")
        out.append(
            f"def track(client: Tracker, name: Literal[{name!r}], properties: {_pascal(name)}Properties) "
            "-> str: ..."
        )
    out.extend(["", ""])
    out.append("def track(client: Tracker, name: str, properties: Any) -> str:")
    out.append(
        '    """``client.track(name, properties)``, type-checked against the tracking plan, with the '
        'event\'s plan version."""'
    )
    out.append("    stamped = dict(properties)")
    out.append('    stamped[TRACKING_PLAN["version_property"]] = TRACKING_PLAN["events"][name]')
    out.append("    return client.track(name, stamped)")
    out.append("")
    return "\n".join(out)


# -- check ----------------------------------------------------------------------------------------------


def _events_of(doc: Any) -> list[Any]:
    if isinstance(doc, dict) and isinstance(doc.get("batch"), list):
        return list(doc["batch"])
    if isinstance(doc, list):
        return doc
    return [doc]


def check(plan: TrackingPlan, file: Path) -> int:
    """Print every violation of every event in ``file``; 1 when there is any, else 0."""
    try:
        doc = json.loads(file.read_text())
    except OSError as exc:
        raise PlanCliError(f"cannot read {file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise PlanCliError(f"{file} is not JSON: {exc}") from None
    compiled = compile_plan(plan)
    failed = 0
    events = _events_of(doc)
    for index, event in enumerate(events):
        where = f"{file}[{index}]"
        if not isinstance(event, dict) or not isinstance(event.get("name"), str):
            print(f"{where}: not an event (an object with a string 'name')")
            failed += 1
            continue
        properties = event.get("properties") or {}
        if not isinstance(properties, dict):
            print(f"{where} {event['name']}: properties must be an object")
            failed += 1
            continue
        violations = compiled.check(event["name"], properties).violations
        for v in violations:
            print(f"{where} {event['name']}: {v}")
        failed += bool(violations)
    print(f"{len(events) - failed} passed, {failed} failed")
    return 1 if failed else 0
