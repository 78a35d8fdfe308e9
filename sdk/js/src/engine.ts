/**
 * Feature-flag evaluation, the same engine as sdk/plg_sdk/flags.py (the growth service's), ported for the
 * browser. The growth service validates every document before serving it, so this compiler is lenient: it
 * never throws for a flag it cannot use, it skips it (evaluations then answer FLAG_NOT_FOUND).
 *
 * Bucketing (docs/growth.md), pinned by sdk/testdata/: key "<salt>:<stickiness value>" (UTF-8),
 * MurmurHash3 x86 32-bit, seed 0 for the rollout and 86028157 for the variant split, bucket = hash mod
 * 10000; in the rollout iff bucket < percent * 100; split variants take consecutive bucket ranges.
 */

import { murmur3String } from "./murmur3.js";

export const BUCKETS = 10_000;
export const ROLLOUT_SEED = 0;
export const VARIANT_SEED = 86028157;

export type FlagValue = boolean | string | number | null | Record<string, unknown> | unknown[];
export type Context = Record<string, unknown>;
export type Reason =
  | "STATIC"
  | "TARGETING_MATCH"
  | "SPLIT"
  | "DEFAULT"
  | "DISABLED"
  | "ERROR"
  | "PREREQUISITE_FAILED"
  | "CACHED";
export type ErrorCode = "FLAG_NOT_FOUND" | "TYPE_MISMATCH" | "PARSE_ERROR" | "GENERAL" | "PROVIDER_NOT_READY";

/** One flag's answer (OpenFeature's evaluation details). */
export interface Evaluation<T = FlagValue> {
  flagKey: string;
  value: T;
  variant: string | null;
  reason: Reason;
  errorCode?: ErrorCode;
  errorMessage?: string;
  version?: number;
}

export type ValueType = "boolean" | "string" | "number" | "integer" | "object";

type Condition = (ctx: Context) => boolean;
const never: Condition = () => false;
const MISSING = Symbol("missing");

interface Serve {
  variant: string | null;
  split: Array<[string, number]>;
}
interface Rule {
  users: Set<string> | null;
  match: Condition | null;
  rollout: number;
  serve: Serve;
}
export interface CompiledFlag {
  key: string;
  version: number;
  enabled: boolean;
  variants: Record<string, FlagValue>;
  offVariant: string;
  rules: Rule[];
  defaultServe: Serve;
  rollout: number;
  stickiness: string[];
  salt: string;
  sticky: boolean;
  prerequisites: Array<[string, Set<string>]>;
  bucketed: boolean;
}

export function bucket(salt: string, value: string, seed = ROLLOUT_SEED): number {
  return murmur3String(`${salt}:${value}`, seed) % BUCKETS;
}

export function splitBounds(weights: number[]): number[] {
  const total = weights.reduce((a, b) => a + b, 0);
  let cumulative = 0;
  return weights.map((w) => {
    cumulative += w;
    return Math.floor((cumulative * BUCKETS) / total);
  });
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);
const isNumber = (v: unknown): v is number => typeof v === "number" && !Number.isNaN(v);
const isScalar = (v: unknown): v is string | number | boolean =>
  typeof v === "string" || typeof v === "number" || typeof v === "boolean";

function getter(attribute: string): (ctx: Context) => unknown {
  if (!attribute.includes(".")) return (ctx) => (attribute in ctx ? ctx[attribute] : MISSING);
  const path = attribute.split(".");
  return (ctx) => {
    let value: unknown = ctx;
    for (const part of path) {
      if (!isObject(value) || !(part in value)) return MISSING;
      value = value[part];
    }
    return value;
  };
}

function all(parts: Condition[]): Condition {
  return parts.length === 1 ? parts[0] : (ctx) => parts.every((p) => p(ctx));
}

export function compileCondition(spec: unknown, segments: Record<string, Condition> | null): Condition {
  if (Array.isArray(spec)) return all(spec.map((s) => compileCondition(s, segments)));
  if (!isObject(spec)) return never;
  if ("all" in spec || "any" in spec) {
    const items = spec.all ?? spec.any;
    if (!Array.isArray(items) || items.length === 0) return never;
    const parts = items.map((s) => compileCondition(s, segments));
    return "all" in spec ? all(parts) : (ctx) => parts.some((p) => p(ctx));
  }
  if ("not" in spec) {
    const inner = compileCondition(spec.not, segments);
    return (ctx) => !inner(ctx);
  }
  if ("segment" in spec) {
    const found = segments?.[String(spec.segment)];
    return found ?? never;
  }
  const { attribute, op } = spec;
  if (typeof attribute !== "string" || !attribute) return never;
  const get = getter(attribute);
  switch (op) {
    case "exists":
      return (ctx) => {
        const v = get(ctx);
        return v !== MISSING && v !== null && v !== undefined;
      };
    case "missing":
      return (ctx) => {
        const v = get(ctx);
        return v === MISSING || v === null || v === undefined;
      };
    case "in":
    case "not_in": {
      if (!Array.isArray(spec.values) || !spec.values.every(isScalar)) return never;
      // Set.has compares like the Python engine: 1 never equals true, 1 equals 1.0.
      const allowed = new Set<unknown>(spec.values);
      const has = (v: unknown) => isScalar(v) && allowed.has(v);
      return op === "in" ? (ctx) => has(get(ctx)) : (ctx) => !has(get(ctx));
    }
  }
  const expected = spec.value;
  if (!isScalar(expected)) return never;
  switch (op) {
    case "eq":
      return (ctx) => get(ctx) === expected;
    case "neq":
      return (ctx) => get(ctx) !== expected;
    case "gt":
    case "gte":
    case "lt":
    case "lte": {
      if (!isNumber(expected)) return never;
      const cmp =
        op === "gt"
          ? (a: number) => a > expected
          : op === "gte"
            ? (a: number) => a >= expected
            : op === "lt"
              ? (a: number) => a < expected
              : (a: number) => a <= expected;
      return (ctx) => {
        const v = get(ctx);
        return isNumber(v) && cmp(v);
      };
    }
  }
  if (typeof expected !== "string") return never;
  switch (op) {
    case "contains":
      return (ctx) => {
        const v = get(ctx);
        if (typeof v === "string") return v.includes(expected);
        return Array.isArray(v) && v.includes(expected);
      };
    case "starts_with":
      return (ctx) => {
        const v = get(ctx);
        return typeof v === "string" && v.startsWith(expected);
      };
    case "ends_with":
      return (ctx) => {
        const v = get(ctx);
        return typeof v === "string" && v.endsWith(expected);
      };
  }
  return never;
}

function percent(value: unknown): number {
  if (value === undefined || value === null) return BUCKETS;
  return isNumber(value) ? Math.round(value * 100) : 0;
}

function compileServe(spec: unknown, variants: Record<string, FlagValue>, fallback: string): Serve {
  if (isObject(spec) && typeof spec.variant === "string" && spec.variant in variants) {
    return { variant: spec.variant, split: [] };
  }
  if (isObject(spec) && Array.isArray(spec.split)) {
    const names: string[] = [];
    const weights: number[] = [];
    for (const item of spec.split) {
      if (isObject(item) && typeof item.variant === "string" && item.variant in variants && isNumber(item.weight)) {
        names.push(item.variant);
        weights.push(item.weight);
      }
    }
    if (names.length && weights.reduce((a, b) => a + b, 0) > 0) {
      const bounds = splitBounds(weights);
      return { variant: null, split: names.map((n, i) => [n, bounds[i]]) };
    }
  }
  return { variant: fallback, split: [] };
}

function compileSegments(raw: unknown): Record<string, Condition> {
  const segments: Record<string, Condition> = {};
  if (!isObject(raw)) return segments;
  for (const [name, spec] of Object.entries(raw)) {
    if (!isObject(spec)) continue;
    const parts: Condition[] = [];
    if (Array.isArray(spec.users)) {
      const members = new Set(spec.users);
      parts.push((ctx) => members.has(ctx.user_id));
    }
    // Segments may not refer to segments (as in the Python engine).
    if ("when" in spec) parts.push(compileCondition(spec.when, null));
    segments[name] = parts.length ? all(parts) : never;
  }
  return segments;
}

function compileFlag(spec: Record<string, unknown>, segments: Record<string, Condition>): CompiledFlag | null {
  const key = spec.key;
  if (typeof key !== "string" || !key) return null;
  const variants: Record<string, FlagValue> =
    isObject(spec.variants) && Object.keys(spec.variants).length
      ? (spec.variants as Record<string, FlagValue>)
      : { on: true, off: false };
  const names = Object.keys(variants);
  const offVariant =
    typeof spec.off_variant === "string" && spec.off_variant in variants
      ? spec.off_variant
      : "off" in variants
        ? "off"
        : names[0];
  const defaultServe = compileServe(spec.default ?? ("on" in variants ? { variant: "on" } : null), variants, offVariant);
  const rollout = percent(spec.rollout);
  let stickiness = spec.stickiness ?? ["user_id", "anonymous_id"];
  if (typeof stickiness === "string") stickiness = [stickiness];
  const rules: Rule[] = [];
  for (const rule of Array.isArray(spec.rules) ? spec.rules : []) {
    if (!isObject(rule)) continue;
    const parts: Condition[] = [];
    for (const name of Array.isArray(rule.segments) ? rule.segments : []) {
      parts.push(segments[String(name)] ?? never);
    }
    if ("when" in rule) parts.push(compileCondition(rule.when, segments));
    rules.push({
      users: Array.isArray(rule.users) ? new Set(rule.users.map(String)) : null,
      match: parts.length ? all(parts) : null,
      rollout: percent(rule.rollout),
      serve: compileServe(rule.serve, variants, offVariant),
    });
  }
  const prerequisites: Array<[string, Set<string>]> = [];
  for (const pre of Array.isArray(spec.prerequisites) ? spec.prerequisites : []) {
    if (isObject(pre) && typeof pre.flag === "string") {
      const wanted = Array.isArray(pre.variants) ? pre.variants.map(String) : ["on"];
      prerequisites.push([pre.flag, new Set(wanted)]);
    }
  }
  return {
    key,
    version: isNumber(spec.version) ? spec.version : 1,
    enabled: spec.enabled !== false,
    variants,
    offVariant,
    rules,
    defaultServe,
    rollout,
    stickiness: Array.isArray(stickiness) ? stickiness.map(String) : ["user_id", "anonymous_id"],
    salt: typeof spec.salt === "string" && spec.salt ? spec.salt : key,
    sticky: spec.sticky === true,
    prerequisites,
    bucketed:
      rollout < BUCKETS ||
      defaultServe.split.length > 0 ||
      rules.some((r) => r.rollout < BUCKETS || r.serve.split.length > 0),
  };
}

/** A stringified stickiness value, as Python's str() writes it (so both SDKs hash the same bytes). */
function stickinessValue(attributes: string[], ctx: Context): string | null {
  for (const attribute of attributes) {
    const v = ctx[attribute];
    if (v === undefined || v === null || v === "") continue;
    if (typeof v === "string") return v;
    if (typeof v === "boolean") return v ? "True" : "False";
    return String(v);
  }
  return null;
}

const MAX_DEPTH = 16;

/** Sticky assignments: "<salt>|<attribute>|<value>" -> variant (GrowthBook's sticky bucketing). */
export type StickyStore = Map<string, string>;

/** Compiled flags; `evaluate` is pure and allocation-light, buckets cached per identity. */
export class FlagSet {
  readonly flags: Map<string, CompiledFlag>;
  readonly revision: unknown;
  private buckets = new Map<string, number>();

  constructor(flags: Map<string, CompiledFlag>, revision?: unknown) {
    this.flags = flags;
    this.revision = revision;
  }

  has(key: string): boolean {
    return this.flags.has(key);
  }

  keys(): string[] {
    return [...this.flags.keys()];
  }

  private bucketOf(seed: number, salt: string, value: string): number {
    const k = `${seed}|${salt}|${value}`;
    let b = this.buckets.get(k);
    if (b === undefined) {
      if (this.buckets.size >= 50_000) this.buckets.clear(); // bounded; refilled as used
      b = bucket(salt, value, seed);
      this.buckets.set(k, b);
    }
    return b;
  }

  evaluate<T = FlagValue>(
    key: string,
    ctx: Context,
    defaultValue?: T,
    expectedType?: ValueType,
    sticky?: StickyStore,
  ): Evaluation<T> {
    const flag = this.flags.get(key);
    if (!flag) {
      return {
        flagKey: key,
        value: defaultValue as T,
        variant: null,
        reason: "ERROR",
        errorCode: "FLAG_NOT_FOUND",
        errorMessage: `no flag '${key}'`,
      };
    }
    const result = this.run(flag, ctx, sticky, 0);
    if (expectedType && !fits(result.value, expectedType)) {
      return {
        flagKey: key,
        value: defaultValue as T,
        variant: null,
        reason: "ERROR",
        errorCode: "TYPE_MISMATCH",
        errorMessage: `flag '${key}' is not a ${expectedType} (variant '${result.variant}')`,
        version: flag.version,
      };
    }
    return result as Evaluation<T>;
  }

  private answer(flag: CompiledFlag, variant: string, reason: Reason): Evaluation {
    return { flagKey: flag.key, value: flag.variants[variant], variant, reason, version: flag.version };
  }

  private run(flag: CompiledFlag, ctx: Context, sticky: StickyStore | undefined, depth: number): Evaluation {
    if (!flag.enabled) return this.answer(flag, flag.offVariant, "DISABLED");
    for (const [preKey, wanted] of flag.prerequisites) {
      const pre = this.flags.get(preKey);
      const preAnswer = pre && depth < MAX_DEPTH ? this.run(pre, ctx, sticky, depth + 1) : null;
      if (!preAnswer || preAnswer.variant === null || !wanted.has(preAnswer.variant)) {
        return this.answer(flag, flag.offVariant, "PREREQUISITE_FAILED");
      }
    }
    const sid = flag.bucketed ? stickinessValue(flag.stickiness, ctx) : null;
    for (const rule of flag.rules) {
      if (rule.users !== null && !rule.users.has(ctx.user_id as string)) continue;
      if (rule.match !== null && !rule.match(ctx)) continue;
      if (rule.rollout < BUCKETS || rule.serve.split.length) {
        const answer = this.bucketed(flag, rule.serve, rule.rollout, sid, ctx, sticky);
        if (answer) return answer;
        continue;
      }
      return this.serve(flag, rule.serve, sid, "TARGETING_MATCH", ctx, sticky);
    }
    if (flag.rollout < BUCKETS || flag.defaultServe.split.length) {
      return (
        this.bucketed(flag, flag.defaultServe, flag.rollout, sid, ctx, sticky) ??
        this.answer(flag, flag.offVariant, "DEFAULT")
      );
    }
    const reason: Reason = flag.rules.length ? "DEFAULT" : "STATIC";
    return this.serve(flag, flag.defaultServe, sid, reason, ctx, sticky);
  }

  private bucketed(
    flag: CompiledFlag,
    serve: Serve,
    rollout: number,
    sid: string | null,
    ctx: Context,
    sticky: StickyStore | undefined,
  ): Evaluation | null {
    const stored = this.stickyAnswer(flag, ctx, sticky);
    if (stored) return stored;
    if (rollout < BUCKETS && (sid === null || this.bucketOf(ROLLOUT_SEED, flag.salt, sid) >= rollout)) return null;
    return this.serve(flag, serve, sid, "SPLIT", ctx, sticky);
  }

  private serve(
    flag: CompiledFlag,
    serve: Serve,
    sid: string | null,
    reason: Reason,
    ctx: Context,
    sticky: StickyStore | undefined,
  ): Evaluation {
    let name: string;
    if (serve.variant !== null) name = serve.variant;
    else if (sid === null) name = serve.split[0][0];
    else {
      const b = this.bucketOf(VARIANT_SEED, flag.salt, sid);
      name = serve.split[serve.split.length - 1][0];
      for (const [candidate, bound] of serve.split) {
        if (b < bound) {
          name = candidate;
          break;
        }
      }
    }
    if (reason === "SPLIT" && flag.sticky && sticky) {
      for (const attribute of flag.stickiness) {
        const v = ctx[attribute];
        if (v !== undefined && v !== null && v !== "") sticky.set(`${flag.salt}|${attribute}|${String(v)}`, name);
      }
    }
    return this.answer(flag, name, reason);
  }

  private stickyAnswer(flag: CompiledFlag, ctx: Context, sticky: StickyStore | undefined): Evaluation | null {
    if (!flag.sticky || !sticky) return null;
    let found: string | undefined;
    for (const attribute of flag.stickiness) {
      const v = ctx[attribute];
      if (v === undefined || v === null || v === "") continue;
      const stored = sticky.get(`${flag.salt}|${attribute}|${String(v)}`);
      if (stored !== undefined && stored in flag.variants) {
        found = stored;
        break;
      }
    }
    if (found === undefined) return null;
    for (const attribute of flag.stickiness) {
      const v = ctx[attribute];
      if (v !== undefined && v !== null && v !== "") sticky.set(`${flag.salt}|${attribute}|${String(v)}`, found);
    }
    return this.answer(flag, found, "SPLIT");
  }
}

function fits(value: unknown, type: ValueType): boolean {
  switch (type) {
    case "boolean":
      return typeof value === "boolean";
    case "string":
      return typeof value === "string";
    case "number":
      return typeof value === "number";
    case "integer":
      return Number.isInteger(value);
    case "object":
      return typeof value === "object" && value !== null;
  }
}

/** Compile a flags document (`{segments?, flags: [...], revision?}`) as GET /v1/flags serves it. */
export function compileDocument(doc: unknown): FlagSet {
  const flags = new Map<string, CompiledFlag>();
  if (!isObject(doc)) return new FlagSet(flags);
  const segments = compileSegments(doc.segments);
  for (const spec of Array.isArray(doc.flags) ? doc.flags : []) {
    if (!isObject(spec)) continue;
    const flag = compileFlag(spec, segments);
    if (flag) flags.set(flag.key, flag);
  }
  return new FlagSet(flags, doc.revision);
}
