"""Feature-flag evaluation: the one engine the growth service and the SDK's local evaluation share.

A flags document (``deploy/config/flags.yaml``, or ``GET /v1/flags`` of the growth service) is compiled
once — every error reported at once — into a :class:`FlagSet`, whose :meth:`FlagSet.evaluate` is pure and
cheap: no I/O, no allocation beyond the answer, buckets cached per identity. The bucketing is specified in
docs/growth.md ("Bucketing") and pinned by the cross-language vectors in ``sdk/testdata/``:

* key ``"<salt>:<stickiness value>"`` (UTF-8), salt = the flag's ``salt`` (its key by default);
* MurmurHash3 x86 32-bit, seed 0 for the rollout, seed 86028157 for the variant split (independent draws,
  so a 10 % rollout of an A/B split still splits 50/50);
* bucket = hash mod 10,000 (basis points): in the rollout iff bucket < percent * 100; a split's variants
  take consecutive ranges of the 10,000 buckets in their listed order, ``floor(cumulative weight * 10000 /
  total weight)`` each.

Answers follow OpenFeature's evaluation details: value, variant, reason, error code and message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from plg_sdk.murmur3 import murmur3_32

BUCKETS = 10_000
ROLLOUT_SEED = 0
VARIANT_SEED = 86028157
#: The stickiness of a flag that names none: the user id, falling back to the anonymous id.
DEFAULT_STICKINESS: tuple[str, ...] = ("user_id", "anonymous_id")
MAX_PREREQUISITE_DEPTH = 16

# OpenFeature reasons (https://openfeature.dev/specification/types#resolution-reason), plus ours.
STATIC = "STATIC"
TARGETING_MATCH = "TARGETING_MATCH"
SPLIT = "SPLIT"
DEFAULT = "DEFAULT"
DISABLED = "DISABLED"
ERROR = "ERROR"
PREREQUISITE_FAILED = "PREREQUISITE_FAILED"

# OpenFeature error codes.
FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
TYPE_MISMATCH = "TYPE_MISMATCH"
PARSE_ERROR = "PARSE_ERROR"
GENERAL = "GENERAL"

_TYPES: dict[str, tuple[type, ...]] = {
    "boolean": (bool,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "object": (dict, list),
}

Context = Mapping[str, Any]
Condition = Callable[[Context], bool]
StickyStore = MutableMapping[str, str]


class FlagConfigError(ValueError):
    """A flags document that cannot be used; ``errors`` lists every problem, one line each."""

    def __init__(self, errors: Sequence[str], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        head = f"invalid flags document{f' {source}' if source else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  - {e}" for e in self.errors))


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One flag's answer for one context (OpenFeature's evaluation details)."""

    flag_key: str
    value: Any
    variant: str | None
    reason: str
    error_code: str | None = None
    error_message: str | None = None
    #: The flag's version when it was evaluated (None for an unknown flag).
    version: int | None = None
    #: True when a sticky assignment decided the variant.
    sticky: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "flag_key": self.flag_key,
            "value": self.value,
            "variant": self.variant,
            "reason": self.reason,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "flag_metadata": {"version": self.version, "sticky": self.sticky},
        }


def bucket(salt: str, value: str, seed: int = ROLLOUT_SEED) -> int:
    """The bucket (0..9999) of ``value`` for a flag salted ``salt`` (the spec's one formula)."""
    return murmur3_32(f"{salt}:{value}".encode(), seed) % BUCKETS


def split_bounds(weights: Sequence[int]) -> list[int]:
    """Upper bucket bound (exclusive) of each variant of a split, in order."""
    total = sum(weights)
    bounds, cumulative = [], 0
    for w in weights:
        cumulative += w
        bounds.append(cumulative * BUCKETS // total)
    return bounds


# -- conditions -------------------------------------------------------------------------------------------

_MISSING = object()


def _getter(attribute: str) -> Callable[[Context], Any]:
    if "." not in attribute:

        def get(ctx: Context) -> Any:
            return ctx.get(attribute, _MISSING)

        return get
    path = attribute.split(".")

    def get_path(ctx: Context) -> Any:
        value: Any = ctx
        for part in path:
            if not isinstance(value, Mapping):
                return _MISSING
            value = value.get(part, _MISSING)
            if value is _MISSING:
                return _MISSING
        return value

    return get_path


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_SCALAR = (str, int, float, bool)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}
OPERATORS = (
    "eq",
    "neq",
    "in",
    "not_in",
    "contains",
    "starts_with",
    "ends_with",
    "gt",
    "gte",
    "lt",
    "lte",
    "exists",
    "missing",
)


def compile_condition(
    spec: Any, where: str, errors: list[str], segments: Mapping[str, Condition] | None = None
) -> Condition:
    """A structured condition as a predicate over a context; problems are appended to ``errors``.

    Forms: ``{attribute, op, value | values}``, ``{all: [...]}``, ``{any: [...]}``, ``{not: {...}}``,
    ``{segment: name}``; a list means ``all``. Never ``eval``: only these forms exist.
    """
    if isinstance(spec, list):
        return _all([compile_condition(s, f"{where}[{i}]", errors, segments) for i, s in enumerate(spec)])
    if not isinstance(spec, Mapping):
        errors.append(f"{where}: a condition is a mapping or a list, got {type(spec).__name__}")
        return _never
    if "all" in spec or "any" in spec:
        kind = "all" if "all" in spec else "any"
        items = spec[kind]
        extra = set(spec) - {kind}
        if extra:
            errors.append(f"{where}: unexpected keys {sorted(extra)} next to {kind!r}")
        if not isinstance(items, list) or not items:
            errors.append(f"{where}.{kind}: must be a non-empty list")
            return _never
        parts = [compile_condition(s, f"{where}.{kind}[{i}]", errors, segments) for i, s in enumerate(items)]
        return _all(parts) if kind == "all" else _any(parts)
    if "not" in spec:
        if set(spec) != {"not"}:
            errors.append(f"{where}: 'not' stands alone")
        inner = compile_condition(spec["not"], f"{where}.not", errors, segments)
        return lambda ctx: not inner(ctx)
    if "segment" in spec:
        name = spec["segment"]
        if segments is None or name not in segments:
            errors.append(f"{where}.segment: unknown segment {name!r}")
            return _never
        return segments[name]
    return _leaf(spec, where, errors)


def _leaf(spec: Mapping[str, Any], where: str, errors: list[str]) -> Condition:
    unknown = set(spec) - {"attribute", "op", "value", "values"}
    if unknown:
        errors.append(f"{where}: unknown keys {sorted(unknown)}")
    attribute, op = spec.get("attribute"), spec.get("op")
    if not isinstance(attribute, str) or not attribute:
        errors.append(f"{where}.attribute: a non-empty string is required")
        return _never
    if op not in OPERATORS:
        errors.append(f"{where}.op: {op!r} is not one of {', '.join(OPERATORS)}")
        return _never
    get = _getter(attribute)
    if op in ("exists", "missing"):
        if "value" in spec or "values" in spec:
            errors.append(f"{where}: {op} takes no value")
        if op == "exists":
            return lambda ctx: get(ctx) not in (_MISSING, None)
        return lambda ctx: get(ctx) in (_MISSING, None)
    if op in ("in", "not_in"):
        values = spec.get("values")
        if not isinstance(values, list) or not all(isinstance(v, _SCALAR) for v in values):
            errors.append(f"{where}.values: {op} needs a list of strings, numbers or booleans")
            return _never
        allowed = frozenset(values)
        if op == "in":

            def is_in(ctx: Context) -> bool:
                v = get(ctx)
                if v.__class__ is str:  # the common case, without the number/boolean care below
                    return v in allowed
                return _hashable_in(v, allowed)

            return is_in

        def not_in(ctx: Context) -> bool:
            v = get(ctx)
            if v.__class__ is str:
                return v not in allowed
            return not _hashable_in(v, allowed)

        return not_in
    if "values" in spec:
        errors.append(f"{where}: {op} takes one 'value', not 'values'")
        return _never
    if "value" not in spec:
        errors.append(f"{where}.value: {op} needs a value")
        return _never
    expected = spec["value"]
    if not isinstance(expected, _SCALAR):
        errors.append(f"{where}.value: must be a string, number or boolean")
        return _never
    if op == "eq":
        return lambda ctx: _same(get(ctx), expected)
    if op == "neq":
        return lambda ctx: not _same(get(ctx), expected)
    if op in _COMPARE:
        if not _is_number(expected):
            errors.append(f"{where}.value: {op} compares numbers; got {expected!r}")
            return _never
        compare = _COMPARE[op]

        def numeric(ctx: Context) -> bool:
            actual = get(ctx)
            return _is_number(actual) and compare(actual, expected)

        return numeric
    if not isinstance(expected, str):
        errors.append(f"{where}.value: {op} needs a string")
        return _never
    if op == "contains":

        def contains(ctx: Context) -> bool:
            actual = get(ctx)
            if isinstance(actual, str):
                return expected in actual
            if isinstance(actual, list | tuple | set | frozenset):
                return expected in actual
            return False

        return contains
    if op == "starts_with":
        return lambda ctx: isinstance(v := get(ctx), str) and v.startswith(expected)
    return lambda ctx: isinstance(v := get(ctx), str) and v.endswith(expected)


def _same(actual: Any, expected: Any) -> bool:
    # true == 1 is True in Python; in a flag rule a boolean never equals a number.
    return actual == expected and isinstance(actual, bool) == isinstance(expected, bool)


def _hashable_in(actual: Any, allowed: frozenset[Any]) -> bool:
    if isinstance(actual, bool):
        return any(a is actual for a in allowed)
    return isinstance(actual, str | int | float) and actual in allowed and not _bool_twin(actual, allowed)


def _bool_twin(actual: Any, allowed: frozenset[Any]) -> bool:
    # 1 in {True} is True in Python: refuse a match that only a boolean made.
    return actual in (0, 1) and not any(a == actual and not isinstance(a, bool) for a in allowed)


def _never(_ctx: Context) -> bool:
    return False


def _all(parts: list[Condition]) -> Condition:
    if len(parts) == 1:
        return parts[0]
    return lambda ctx: all(p(ctx) for p in parts)


def _any(parts: list[Condition]) -> Condition:
    return lambda ctx: any(p(ctx) for p in parts)


# -- flags ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Serve:
    """A fixed variant, or a split: variants with their upper bucket bounds."""

    variant: str | None
    split: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    users: frozenset[str] | None
    match: Condition | None
    rollout: int  # basis points
    serve: _Serve


@dataclass(frozen=True, slots=True)
class CompiledFlag:
    key: str
    version: int
    enabled: bool
    variants: Mapping[str, Any]
    off_variant: str
    rules: tuple[_Rule, ...]
    default: _Serve
    rollout: int
    stickiness: tuple[str, ...]
    salt: str
    sticky: bool
    prerequisites: tuple[tuple[str, frozenset[str]], ...]
    #: Some answer depends on a bucket (a rollout below 100 % or a split somewhere).
    bucketed: bool = False


_FLAG_KEYS = {
    "key",
    "description",
    "version",
    "enabled",
    "variants",
    "off_variant",
    "default",
    "rollout",
    "rules",
    "stickiness",
    "salt",
    "sticky",
    "prerequisites",
    "tags",
}
_RULE_KEYS = {"name", "users", "when", "segments", "rollout", "serve"}
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")


def _valid_key(key: Any) -> bool:
    return (
        isinstance(key, str) and 0 < len(key) <= 100 and key[0].isalpha() and set(key.lower()) <= _KEY_CHARS
    )


def _percent(value: Any, where: str, errors: list[str]) -> int:
    if value is None:
        return BUCKETS
    if not _is_number(value) or not 0 <= value <= 100 or math.isnan(value):
        errors.append(f"{where}: a percentage from 0 to 100, got {value!r}")
        return 0
    basis: float = value * 100
    if abs(basis - round(basis)) > 1e-9:
        errors.append(f"{where}: at most two decimals (the bucket count is 10,000), got {value!r}")
    return round(basis)


def _serve(spec: Any, variants: Mapping[str, Any], where: str, errors: list[str]) -> _Serve:
    if not isinstance(spec, Mapping) or len(spec) != 1 or not ({"variant", "split"} & set(spec)):
        errors.append(f"{where}: either {{variant: <name>}} or {{split: [{{variant, weight}}, ...]}}")
        return _Serve(None)
    if "variant" in spec:
        name = spec["variant"]
        if name not in variants:
            errors.append(f"{where}.variant: unknown variant {name!r} (known: {', '.join(variants)})")
        return _Serve(str(name))
    items = spec["split"]
    if not isinstance(items, list) or not items:
        errors.append(f"{where}.split: a non-empty list of {{variant, weight}}")
        return _Serve(None)
    names: list[str] = []
    weights: list[int] = []
    for i, item in enumerate(items):
        at = f"{where}.split[{i}]"
        if not isinstance(item, Mapping) or set(item) != {"variant", "weight"}:
            errors.append(f"{at}: exactly 'variant' and 'weight'")
            continue
        name, weight = item["variant"], item["weight"]
        if name not in variants:
            errors.append(f"{at}.variant: unknown variant {name!r}")
        elif name in names:
            errors.append(f"{at}.variant: {name!r} is listed twice")
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            errors.append(f"{at}.weight: a whole number >= 0, got {weight!r}")
            continue
        names.append(str(name))
        weights.append(weight)
    if names and sum(weights) <= 0:
        errors.append(f"{where}.split: the weights add up to 0")
        return _Serve(None)
    if not names:
        return _Serve(None)
    return _Serve(None, tuple(zip(names, split_bounds(weights), strict=True)))


def _compile_flag(
    spec: Any, where: str, errors: list[str], segments: Mapping[str, Condition]
) -> CompiledFlag | None:
    if not isinstance(spec, Mapping):
        errors.append(f"{where}: a flag is a mapping")
        return None
    key = spec.get("key")
    if not _valid_key(key):
        errors.append(f"{where}.key: letters, digits, '_', '-', '.', starting with a letter; got {key!r}")
        return None
    where = f"{where} ({key})"
    unknown = set(spec) - _FLAG_KEYS
    if unknown:
        errors.append(f"{where}: unknown keys {sorted(unknown)}")
    enabled = spec.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.append(f"{where}.enabled: true or false")
    version = spec.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        errors.append(f"{where}.version: a whole number >= 1")
        version = 1
    raw_variants = spec.get("variants")
    variants: dict[str, Any]
    if raw_variants is None:
        variants = {"on": True, "off": False}  # a boolean flag
    elif isinstance(raw_variants, Mapping) and raw_variants:
        variants = {}
        for name, value in raw_variants.items():
            if not _valid_key(name):
                errors.append(f"{where}.variants: bad variant name {name!r}")
            variants[str(name)] = value
    else:
        errors.append(f"{where}.variants: a non-empty mapping of variant name -> value")
        variants = {"on": True, "off": False}
    off_variant = spec.get("off_variant", "off" if "off" in variants else None)
    if off_variant not in variants:
        errors.append(f"{where}.off_variant: one of the variants (served when off); got {off_variant!r}")
        off_variant = next(iter(variants))
    default_spec = spec.get("default", {"variant": "on"} if "on" in variants else None)
    default = _serve(default_spec, variants, f"{where}.default", errors)
    rollout = _percent(spec.get("rollout"), f"{where}.rollout", errors)
    stickiness = spec.get("stickiness", list(DEFAULT_STICKINESS))
    if isinstance(stickiness, str):
        stickiness = [stickiness]
    if not isinstance(stickiness, list) or not stickiness or not all(isinstance(s, str) for s in stickiness):
        errors.append(f"{where}.stickiness: a context attribute name or a list of them (first present wins)")
        stickiness = list(DEFAULT_STICKINESS)
    salt = spec.get("salt", key)
    if not isinstance(salt, str) or not salt:
        errors.append(f"{where}.salt: a non-empty string")
        salt = key
    sticky = spec.get("sticky", False)
    if not isinstance(sticky, bool):
        errors.append(f"{where}.sticky: true or false")
    prerequisites: list[tuple[str, frozenset[str]]] = []
    for i, pre in enumerate(spec.get("prerequisites") or []):
        at = f"{where}.prerequisites[{i}]"
        if not isinstance(pre, Mapping) or not isinstance(pre.get("flag"), str):
            errors.append(f"{at}: {{flag: <key>, variants: [<name>, ...]}}")
            continue
        wanted = pre.get("variants", ["on"])
        if not isinstance(wanted, list) or not wanted or not all(isinstance(v, str) for v in wanted):
            errors.append(f"{at}.variants: a non-empty list of variant names")
            continue
        prerequisites.append((pre["flag"], frozenset(wanted)))
    rules: list[_Rule] = []
    raw_rules = spec.get("rules") or []
    if not isinstance(raw_rules, list):
        errors.append(f"{where}.rules: a list")
        raw_rules = []
    for i, rule in enumerate(raw_rules):
        at = f"{where}.rules[{i}]"
        if not isinstance(rule, Mapping):
            errors.append(f"{at}: a rule is a mapping")
            continue
        unknown = set(rule) - _RULE_KEYS
        if unknown:
            errors.append(f"{at}: unknown keys {sorted(unknown)}")
        users = rule.get("users")
        if users is not None and (not isinstance(users, list) or not all(isinstance(u, str) for u in users)):
            errors.append(f"{at}.users: a list of user ids")
            users = None
        parts: list[Condition] = []
        for j, name in enumerate(rule.get("segments") or []):
            if name not in segments:
                errors.append(f"{at}.segments[{j}]: unknown segment {name!r}")
            else:
                parts.append(segments[name])
        if "when" in rule:
            parts.append(compile_condition(rule["when"], f"{at}.when", errors, segments))
        if users is None and not parts and "rollout" not in rule:
            errors.append(f"{at}: a rule needs users, segments, when or rollout (else it is the default)")
        rules.append(
            _Rule(
                name=str(rule.get("name", f"rule-{i}")),
                users=frozenset(users) if users is not None else None,
                match=_all(parts) if parts else None,
                rollout=_percent(rule.get("rollout"), f"{at}.rollout", errors),
                serve=_serve(rule.get("serve"), variants, f"{at}.serve", errors),
            )
        )
    return CompiledFlag(
        key=str(key),
        version=version,
        enabled=bool(enabled),
        variants=variants,
        off_variant=str(off_variant),
        rules=tuple(rules),
        default=default,
        rollout=rollout,
        stickiness=tuple(stickiness),
        salt=salt,
        sticky=bool(sticky),
        prerequisites=tuple(prerequisites),
        bucketed=rollout < BUCKETS
        or bool(default.split)
        or any(r.rollout < BUCKETS or r.serve.split for r in rules),
    )


def compile_segments(raw: Any, errors: list[str]) -> dict[str, Condition]:
    """Named conditions (``segments: {name: {users: [...]} | {when: <condition>}}``) rules refer to."""
    segments: dict[str, Condition] = {}
    if raw is None:
        return segments
    if not isinstance(raw, Mapping):
        errors.append("segments: a mapping of segment name -> {users | when}")
        return segments
    for name, spec in raw.items():
        at = f"segments.{name}"
        if not _valid_key(name):
            errors.append(f"{at}: bad segment name")
        if (
            not isinstance(spec, Mapping)
            or not ({"users", "when"} & set(spec))
            or set(spec)
            - {
                "users",
                "when",
                "description",
            }
        ):
            errors.append(f"{at}: {{users: [...]}} and/or {{when: <condition>}} (plus description)")
            continue
        parts: list[Condition] = []
        if "users" in spec:
            ids = spec["users"]
            if not isinstance(ids, list) or not all(isinstance(u, str) for u in ids):
                errors.append(f"{at}.users: a list of user ids")
            else:
                members = frozenset(ids)
                parts.append(lambda ctx, members=members: ctx.get("user_id") in members)  # type: ignore[misc]
        if "when" in spec:
            # Segments may not refer to segments: no cycles to detect, and one level reads better.
            parts.append(compile_condition(spec["when"], f"{at}.when", errors, None))
        segments[str(name)] = _all(parts) if parts else _never
    return segments


def _check_prerequisites(flags: Mapping[str, CompiledFlag], errors: list[str]) -> None:
    for flag in flags.values():
        for key, wanted in flag.prerequisites:
            other = flags.get(key)
            if other is None:
                errors.append(f"flag {flag.key}: prerequisite {key!r} is not a flag")
                continue
            unknown = wanted - set(other.variants)
            if unknown:
                errors.append(f"flag {flag.key}: prerequisite {key} has no variants {sorted(unknown)}")
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(key: str, path: list[str]) -> None:
        if state.get(key) == 2 or key not in flags:
            return
        if state.get(key) == 1:
            cycle = [*path[path.index(key) :], key]
            errors.append(f"prerequisites form a cycle: {' -> '.join(cycle)}")
            return
        state[key] = 1
        if len(path) >= MAX_PREREQUISITE_DEPTH:
            errors.append(f"prerequisite chain deeper than {MAX_PREREQUISITE_DEPTH}: {' -> '.join(path)}")
        else:
            for pre, _ in flags[key].prerequisites:
                visit(pre, [*path, key])
        state[key] = 2

    for key in flags:
        visit(key, [])


class FlagSet:
    """Compiled flags; :meth:`evaluate` is the engine. Build with :func:`compile_document`."""

    def __init__(self, flags: Mapping[str, CompiledFlag], revision: str | None = None) -> None:
        self.flags = dict(flags)
        self.revision = revision
        self._buckets: dict[tuple[int, str, str], int] = {}
        # Every answer a flag can give (variant x reason) made once: an evaluation then allocates nothing,
        # and a flag whose answer cannot depend on the context is one dictionary lookup.
        self._answers: dict[tuple[str, str, str], Evaluation] = {}
        self._constant: dict[str, Evaluation] = {}
        reasons = (STATIC, TARGETING_MATCH, SPLIT, DEFAULT, DISABLED, PREREQUISITE_FAILED)
        for flag in self.flags.values():
            for name, value in flag.variants.items():
                for reason in reasons:
                    self._answers[(flag.key, name, reason)] = Evaluation(
                        flag.key, value, name, reason, version=flag.version
                    )
            if not flag.enabled:
                self._constant[flag.key] = self._answers[(flag.key, flag.off_variant, DISABLED)]
            elif (
                not flag.prerequisites
                and not flag.rules
                and flag.rollout >= BUCKETS
                and not flag.default.split
                and flag.default.variant is not None
            ):
                self._constant[flag.key] = self._answers[(flag.key, flag.default.variant, STATIC)]

    def __contains__(self, key: str) -> bool:
        return key in self.flags

    def __len__(self) -> int:
        return len(self.flags)

    def _bucket(self, seed: int, salt: str, value: str) -> int:
        # Hashing in pure Python costs a few µs; an app evaluates the same flags for the same user over and
        # over, so the buckets are cached (bounded: dropped wholesale when large, refilled as used).
        cache = self._buckets
        ck = (seed, salt, value)
        b = cache.get(ck)
        if b is None:
            if len(cache) >= 200_000:
                cache.clear()
            b = cache[ck] = murmur3_32(f"{salt}:{value}".encode(), seed) % BUCKETS
        return b

    def evaluate(
        self,
        key: str,
        context: Context,
        default: Any = None,
        *,
        expected_type: str | None = None,
        sticky: StickyStore | None = None,
    ) -> Evaluation:
        """The flag's value for ``context``; never raises for a flag or context problem (the answer has
        reason ERROR, ``default`` as value and an OpenFeature error code instead)."""
        result = self._constant.get(key)
        if result is None:
            flag = self.flags.get(key)
            if flag is None:
                return Evaluation(key, default, None, ERROR, FLAG_NOT_FOUND, f"no flag {key!r}")
            result = self._evaluate(flag, context, sticky, 0)
        if expected_type is not None:
            flag = self.flags[key]
            types = _TYPES.get(expected_type)
            value = result.value
            if types is None:
                return Evaluation(key, default, None, ERROR, GENERAL, f"unknown type {expected_type!r}")
            if not isinstance(value, types) or (expected_type != "boolean" and isinstance(value, bool)):
                return Evaluation(
                    key,
                    default,
                    None,
                    ERROR,
                    TYPE_MISMATCH,
                    f"flag {key!r} is not a {expected_type} (variant {result.variant!r})",
                    flag.version,
                )
        return result

    def evaluate_all(self, context: Context, sticky: StickyStore | None = None) -> dict[str, Evaluation]:
        return {key: self.evaluate(key, context, sticky=sticky) for key in self.flags}

    def _off(self, flag: CompiledFlag, reason: str) -> Evaluation:
        return self._answers[(flag.key, flag.off_variant, reason)]

    def _evaluate(
        self, flag: CompiledFlag, ctx: Context, sticky: StickyStore | None, depth: int
    ) -> Evaluation:
        if not flag.enabled:
            return self._off(flag, DISABLED)
        for pre_key, wanted in flag.prerequisites:
            # Compilation refused unknown flags and cycles.
            pre = self._evaluate(self.flags[pre_key], ctx, sticky, depth + 1)
            if pre.variant not in wanted:
                return self._off(flag, PREREQUISITE_FAILED)
        sid = _stickiness_value(flag.stickiness, ctx) if flag.bucketed else None
        for rule in flag.rules:
            if rule.users is not None and ctx.get("user_id") not in rule.users:
                continue
            if rule.match is not None and not rule.match(ctx):
                continue
            if rule.rollout < BUCKETS or rule.serve.split:
                answer = self._bucketed(flag, rule.serve, rule.rollout, sid, ctx, sticky)
                if answer is not None:
                    return answer
                continue
            return self._serve(flag, rule.serve, sid, TARGETING_MATCH, ctx, sticky)
        if flag.rollout < BUCKETS or flag.default.split:
            answer = self._bucketed(flag, flag.default, flag.rollout, sid, ctx, sticky)
            return self._off(flag, DEFAULT) if answer is None else answer
        return self._serve(flag, flag.default, sid, DEFAULT if flag.rules else STATIC, ctx, sticky)

    def _bucketed(
        self,
        flag: CompiledFlag,
        serve: _Serve,
        rollout: int,
        sid: str | None,
        ctx: Context,
        sticky: StickyStore | None,
    ) -> Evaluation | None:
        """A decision that depends on the bucket: a stored sticky assignment, else the rollout draw (None
        outside it) and the split."""
        stored = self._sticky(flag, ctx, sticky)
        if stored is not None:
            return stored
        if rollout < BUCKETS and (sid is None or self._bucket(ROLLOUT_SEED, flag.salt, sid) >= rollout):
            return None
        return self._serve(flag, serve, sid, SPLIT, ctx, sticky)

    def _serve(
        self,
        flag: CompiledFlag,
        serve: _Serve,
        sid: str | None,
        reason: str,
        ctx: Context,
        sticky: StickyStore | None,
    ) -> Evaluation:
        name: str
        if serve.variant is not None:
            name = serve.variant
        elif sid is None:  # a split with nothing to split on: everyone gets the first variant
            name = serve.split[0][0]
        else:
            b = self._bucket(VARIANT_SEED, flag.salt, sid)
            name = serve.split[-1][0]
            for candidate, bound in serve.split:
                if b < bound:
                    name = candidate
                    break
        if reason == SPLIT and flag.sticky and sticky is not None:
            for attribute in flag.stickiness:
                v = ctx.get(attribute)
                if v is not None and v != "":
                    sticky[f"{flag.salt}|{attribute}|{v}"] = name
        return self._answers[(flag.key, name, reason)]

    def _sticky(self, flag: CompiledFlag, ctx: Context, sticky: StickyStore | None) -> Evaluation | None:
        """A variant stored for any of the context's identities (first stickiness attribute first): an
        anonymous visitor's assignment follows them once they sign up (GrowthBook's sticky bucketing)."""
        if not flag.sticky or sticky is None:
            return None
        found: str | None = None
        for attribute in flag.stickiness:
            v = ctx.get(attribute)
            if v is None or v == "":
                continue
            stored = sticky.get(f"{flag.salt}|{attribute}|{v}")
            if stored is not None and stored in flag.variants:
                found = stored
                break
        if found is None:
            return None
        for attribute in flag.stickiness:  # remember it under every identity the context has now
            v = ctx.get(attribute)
            if v is not None and v != "":
                sticky[f"{flag.salt}|{attribute}|{v}"] = found
        return Evaluation(flag.key, flag.variants[found], found, SPLIT, version=flag.version, sticky=True)


def _stickiness_value(attributes: tuple[str, ...], ctx: Context) -> str | None:
    for attribute in attributes:
        v = ctx.get(attribute)
        if v is not None and v != "":
            return v if isinstance(v, str) else str(v)
    return None


def compile_document(doc: Any, source: str | None = None, revision: str | None = None) -> FlagSet:
    """Compile a flags document (``{segments?, flags: [...]}``); raises :class:`FlagConfigError` listing
    every problem found."""
    errors: list[str] = []
    if not isinstance(doc, Mapping):
        raise FlagConfigError(["the document must be a mapping with a 'flags' list"], source)
    unknown = set(doc) - {"version", "segments", "flags", "revision"}
    if unknown:
        errors.append(f"unknown top-level keys {sorted(unknown)}")
    segments = compile_segments(doc.get("segments"), errors)
    raw_flags = doc.get("flags")
    if not isinstance(raw_flags, list):
        errors.append("flags: a list of flags")
        raw_flags = []
    flags: dict[str, CompiledFlag] = {}
    for i, spec in enumerate(raw_flags):
        flag = _compile_flag(spec, f"flags[{i}]", errors, segments)
        if flag is None:
            continue
        if flag.key in flags:
            errors.append(f"flags[{i}]: key {flag.key!r} is defined twice")
        flags[flag.key] = flag
    _check_prerequisites(flags, errors)
    if errors:
        raise FlagConfigError(errors, source)
    return FlagSet(flags, revision)


def flag_errors(spec: Any, others: Iterable[Mapping[str, Any]], segments: Any = None) -> list[str]:
    """Problems of one flag definition in the company of the others (what an admin change is checked
    with): an empty list when it compiles."""
    try:
        compile_document({"segments": segments, "flags": [*others, spec]})
    except FlagConfigError as exc:
        return exc.errors
    return []
