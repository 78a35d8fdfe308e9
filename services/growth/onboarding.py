"""The onboarding engine: flows from ``deploy/config/onboarding.yaml`` and the pure choice of the next step.

Conditions are the flag engine's structured conditions (``plg_sdk.flags.compile_condition``: data, never
``eval``) over a context of the person's and customer's event counts, flag values, intent and plan.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plg_sdk.flags import Condition, compile_condition, compile_document

from services.kernel.config import ConfigFileError, config_path, load_yaml

Scalar = None | bool | int | float | str

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ONBOARDING_FILE = REPO / "deploy" / "config" / "onboarding.yaml"

COMPLETED = "completed"  # recorded through POST .../complete
DONE_IN_PRODUCT = "done_in_product"  # done_when holds: skipped
HIDDEN = "hidden"  # when does not hold, or another intent
PENDING = "pending"  # would be shown after the next one
NEXT = "next"


WHAT = "onboarding config"
#: The one config error of every service (services.kernel.config), under this module's old name.
OnboardingConfigError = ConfigFileError


PERSON = "person"
CUSTOMER = "customer"
#: An emitted event's name: what ingest accepts from apps (no "$": plg's own names), 1-200 characters.
_EVENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,199}$")
MAX_TRIAL_DAYS = 366


@dataclass(frozen=True)
class SetFlag:
    """Serve ``variant`` of ``flag`` to the person (or the whole customer) from the completion on."""

    flag: str
    variant: str
    scope: str  # PERSON | CUSTOMER

    kind = "set_flag"

    def detail(self) -> dict[str, Any]:
        return {"flag": self.flag, "variant": self.variant, "for": self.scope}


@dataclass(frozen=True)
class GrantTrial:
    """The customer may use boolean feature ``feature`` for ``days`` days (the entitlement API says so)."""

    feature: str
    days: int

    kind = "grant_trial"

    def detail(self) -> dict[str, Any]:
        return {"feature": self.feature, "days": self.days}


@dataclass(frozen=True)
class Emit:
    """Write one ``event`` (with ``properties``, plus step_id and flow) to usage-events for the person."""

    event: str
    properties: Mapping[str, Scalar]

    kind = "emit"

    def detail(self) -> dict[str, Any]:
        return {"event": self.event, "properties": dict(self.properties)}


Action = SetFlag | GrantTrial | Emit


@dataclass(frozen=True)
class Step:
    id: str
    title: str
    intent: str | None
    priority: int
    when: Condition | None
    done_when: Condition | None
    order: int
    #: What completing the step does, once (seed 002 markComplete's "post-completion hook").
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True)
class Flow:
    name: str
    steps: tuple[Step, ...]  # by priority, highest first (ties: listed order)

    def step(self, step_id: str) -> Step | None:
        return next((s for s in self.steps if s.id == step_id), None)


@dataclass(frozen=True)
class OnboardingConfig:
    version: int
    flow_flag: str | None
    default_flow: str
    flows: Mapping[str, Flow]
    #: Event names the conditions count (counts.X / customer_counts.X): the activation loop counts them.
    person_events: frozenset[str]
    customer_events: frozenset[str]

    def step_ids(self) -> set[str]:
        return {s.id for f in self.flows.values() for s in f.steps}


def _attributes(spec: Any) -> Iterator[str]:
    if isinstance(spec, list):
        for s in spec:
            yield from _attributes(s)
    elif isinstance(spec, Mapping):
        if isinstance(spec.get("attribute"), str):
            yield spec["attribute"]
        for k in ("all", "any", "not"):
            if k in spec:
                yield from _attributes(spec[k])


def onboarding_path(path: Path | None = None) -> Path:
    return config_path(path, "PLG_ONBOARDING_CONFIG", DEFAULT_ONBOARDING_FILE)


def load_onboarding(path: Path | None = None) -> OnboardingConfig:
    source = onboarding_path(path)
    doc = load_yaml(source, WHAT)
    return parse_onboarding(doc, str(source))


def load_onboarding_checked(
    path: Path | None, flags_document: Mapping[str, Any], features: frozenset[str]
) -> OnboardingConfig:
    """:func:`load_onboarding`, with the completion actions' flags, variants and trial features checked
    against the (already validated) flags document and the plans' boolean features: every error at once.
    What the service runs at start and ``--check-config`` prints."""
    source = onboarding_path(path)
    flags = compile_document(flags_document).flags
    refs = ActionRefs({k: list(f.variants) for k, f in flags.items()}, features)
    return parse_onboarding(load_yaml(source, WHAT), str(source), refs)


@dataclass(frozen=True)
class ActionRefs:
    """What completion actions may name: each flag's variant names (the flags file) and the plans' boolean
    features (metering.yaml). Without it only the actions' shape is checked."""

    flag_variants: Mapping[str, Sequence[str]]
    features: frozenset[str]


def parse_onboarding(doc: Any, source: str | None = None, refs: ActionRefs | None = None) -> OnboardingConfig:
    """Every error at once (:class:`OnboardingConfigError`)."""
    errors: list[str] = []
    if not isinstance(doc, Mapping):
        raise ConfigFileError(source, ["the file must be a mapping with flows"], WHAT)
    unknown = set(doc) - {"version", "flow_flag", "default_flow", "flows"}
    if unknown:
        errors.append(f"unknown keys {sorted(unknown)}")
    raw_flows = doc.get("flows")
    if not isinstance(raw_flows, Mapping) or not raw_flows:
        raise ConfigFileError(source, [*errors, "flows: a mapping of flow name -> {steps: [...]}"], WHAT)
    flows: dict[str, Flow] = {}
    person_events: set[str] = set()
    customer_events: set[str] = set()
    for name, flow in raw_flows.items():
        at = f"flows.{name}"
        steps_raw = flow.get("steps") if isinstance(flow, Mapping) else None
        if not isinstance(steps_raw, list) or not steps_raw:
            errors.append(f"{at}.steps: a non-empty list of steps")
            continue
        steps: list[Step] = []
        ids: set[str] = set()
        for i, spec in enumerate(steps_raw):
            sat = f"{at}.steps[{i}]"
            if not isinstance(spec, Mapping):
                errors.append(f"{sat}: a mapping")
                continue
            extra = set(spec) - {
                "id",
                "title",
                "intent",
                "goal",
                "priority",
                "when",
                "done_when",
                "description",
                "on_complete",
            }
            if extra:
                errors.append(f"{sat}: unknown keys {sorted(extra)}")
            step_id = spec.get("id")
            if not isinstance(step_id, str) or not step_id or len(step_id) > 100:
                errors.append(f"{sat}.id: a step id (1-100 characters)")
                continue
            if step_id in ids:
                errors.append(f"{sat}.id: {step_id!r} twice in flow {name}")
            ids.add(step_id)
            priority = spec.get("priority", 0)
            if not isinstance(priority, int) or isinstance(priority, bool):
                errors.append(f"{sat}.priority: a whole number")
                priority = 0
            intent = spec.get("intent", spec.get("goal"))
            if intent is not None and not isinstance(intent, str):
                errors.append(f"{sat}.intent: a string")
                intent = None
            if spec.get("done_when") is None:
                errors.append(
                    f"{sat}.done_when: how the product shows the step is done (so it can be skipped)"
                )
            conditions: dict[str, Condition | None] = {}
            for key in ("when", "done_when"):
                cond = spec.get(key)
                conditions[key] = None if cond is None else compile_condition(cond, f"{sat}.{key}", errors)
                for attribute in _attributes(cond):
                    head, _, rest = attribute.partition(".")
                    if head == "counts" and rest:
                        person_events.add(rest)
                    elif head == "customer_counts" and rest:
                        customer_events.add(rest)
            steps.append(
                Step(
                    step_id,
                    str(spec.get("title") or step_id),
                    intent,
                    priority,
                    conditions["when"],
                    conditions["done_when"],
                    i,
                    _actions(spec.get("on_complete"), f"{sat}.on_complete", errors, refs),
                )
            )
        steps.sort(key=lambda s: (-s.priority, s.order))
        flows[str(name)] = Flow(str(name), tuple(steps))
    default_flow = doc.get("default_flow")
    if default_flow not in raw_flows:
        errors.append(
            f"default_flow: one of the flows ({', '.join(map(str, raw_flows))}), got {default_flow!r}"
        )
    flow_flag = doc.get("flow_flag")
    if flow_flag is not None and not isinstance(flow_flag, str):
        errors.append("flow_flag: a flag key")
    if errors:
        raise ConfigFileError(source, errors, WHAT)
    return OnboardingConfig(
        int(doc.get("version", 1)),
        flow_flag,
        str(default_flow),
        flows,
        frozenset(person_events),
        frozenset(customer_events),
    )


def _actions(raw: Any, at: str, errors: list[str], refs: ActionRefs | None) -> tuple[Action, ...]:
    """The step's ``on_complete`` list: each item one of ``{set_flag: {flag, variant, for}}``,
    ``{grant_trial: {feature, days}}``, ``{emit: {event, properties}}``; given ``refs``, the flags,
    variants and features named are checked to exist too."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append(f"{at}: a list of actions (set_flag, grant_trial, emit)")
        return ()
    actions: list[Action] = []
    for i, item in enumerate(raw):
        where = f"{at}[{i}]"
        if not isinstance(item, Mapping) or len(item) != 1:
            errors.append(f"{where}: one of {{set_flag: ...}}, {{grant_trial: ...}}, {{emit: ...}}")
            continue
        ((kind, spec),) = item.items()
        where = f"{where}.{kind}"
        if kind not in ("set_flag", "grant_trial", "emit"):
            errors.append(f"{at}[{i}]: unknown action {kind!r} (set_flag, grant_trial or emit)")
            continue
        if not isinstance(spec, Mapping):
            errors.append(f"{where}: a mapping")
            continue
        allowed = {"set_flag": {"flag", "variant", "for"}, "grant_trial": {"feature", "days"}}.get(
            kind, {"event", "properties"}
        )
        extra = set(spec) - allowed
        if extra:
            errors.append(f"{where}: unknown keys {sorted(map(str, extra))} (allowed: {sorted(allowed)})")
        if kind == "set_flag":
            flag, variant, scope = spec.get("flag"), spec.get("variant"), spec.get("for", PERSON)
            ok = True
            if not isinstance(flag, str) or not flag:
                errors.append(f"{where}.flag: a flag key")
                ok = False
            if not isinstance(variant, str) or not variant:
                errors.append(f'{where}.variant: the name of one of the flag\'s variants (e.g. "on")')
                ok = False
            if scope not in (PERSON, CUSTOMER):
                errors.append(f"{where}.for: person or customer, got {scope!r}")
                ok = False
            if ok and refs is not None:
                variants = refs.flag_variants.get(str(flag))
                if variants is None:
                    errors.append(
                        f"{where}.flag: no flag {flag!r} in the flags file "
                        f"(known: {', '.join(sorted(refs.flag_variants)) or 'none'})"
                    )
                    ok = False
                elif variant not in variants:
                    errors.append(
                        f"{where}.variant: flag {flag!r} has no variant {variant!r} "
                        f"(its variants: {', '.join(variants)})"
                    )
                    ok = False
            if ok:
                actions.append(SetFlag(str(flag), str(variant), str(scope)))
        elif kind == "grant_trial":
            feature, days = spec.get("feature"), spec.get("days")
            ok = True
            if not isinstance(feature, str) or not feature:
                errors.append(f"{where}.feature: a boolean feature of the plans (metering.yaml)")
                ok = False
            elif refs is not None and feature not in refs.features:
                errors.append(
                    f"{where}.feature: {feature!r} is not a boolean feature of any plan "
                    f"(known: {', '.join(sorted(refs.features)) or 'none'})"
                )
                ok = False
            if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_TRIAL_DAYS:
                errors.append(f"{where}.days: a whole number of days, 1-{MAX_TRIAL_DAYS}, got {days!r}")
                ok = False
            if ok and isinstance(days, int):
                actions.append(GrantTrial(str(feature), days))
        else:
            event, props = spec.get("event"), spec.get("properties", {})
            ok = True
            if not isinstance(event, str) or not _EVENT_NAME.match(event):
                errors.append(
                    f"{where}.event: an event name (letters, digits, _ . : / -, not starting with $), "
                    f"got {event!r}"
                )
                ok = False
            if not isinstance(props, Mapping):
                errors.append(f"{where}.properties: a flat mapping of name -> string, number or boolean")
                ok = False
            else:
                for key, value in props.items():
                    if not isinstance(key, str) or not key or key.startswith("$"):
                        errors.append(f"{where}.properties: bad property name {key!r}")
                        ok = False
                    elif value is not None and not isinstance(value, str | int | float | bool):
                        errors.append(f"{where}.properties.{key}: a string, number or boolean")
                        ok = False
            if ok:
                actions.append(Emit(str(event), dict(props)))
    return tuple(actions)


@dataclass(frozen=True)
class StepState:
    step: Step
    status: str
    why: str


@dataclass(frozen=True)
class Recommendation:
    flow: str
    next: StepState | None
    steps: tuple[StepState, ...]

    @property
    def why(self) -> str:
        if self.next is not None:
            return self.next.why
        done = sum(s.status in (COMPLETED, DONE_IN_PRODUCT) for s in self.steps)
        return f"no step to show: {done} of {len(self.steps)} done, the others hidden by their conditions"


def recommend(
    config: OnboardingConfig,
    flow_name: str,
    context: Mapping[str, Any],
    completed: Sequence[str],
) -> Recommendation:
    """The next step of ``flow_name`` for ``context`` (see deploy/config/onboarding.yaml), with every
    step's status and why."""
    flow = config.flows.get(flow_name) or config.flows[config.default_flow]
    done = set(completed)
    intent = context.get("intent")
    states: list[StepState] = []
    chosen: StepState | None = None
    for step in flow.steps:
        if step.id in done:
            states.append(StepState(step, COMPLETED, "completed"))
        elif step.done_when is not None and step.done_when(context):
            states.append(StepState(step, DONE_IN_PRODUCT, "already done in the product (done_when holds)"))
        elif intent and step.intent and step.intent != intent:
            states.append(StepState(step, HIDDEN, f"for intent {step.intent!r}, the person's is {intent!r}"))
        elif step.when is not None and not step.when(context):
            states.append(StepState(step, HIDDEN, "its condition does not hold"))
        elif chosen is None:
            chosen = StepState(
                step,
                NEXT,
                f"highest priority ({step.priority}) step of flow {flow.name!r} not done yet"
                + (" whose condition holds" if step.when is not None else ""),
            )
            states.append(chosen)
        else:
            states.append(StepState(step, PENDING, "after the next one"))
    return Recommendation(flow.name, chosen, tuple(states))
