/**
 * @plg/sdk: the browser SDK of plg. One object, `plg`, with events (offline queue, consent), flags
 * (local evaluation), entitlements and onboarding. docs/sdk.md has the guide.
 *
 *     import { plg } from "@plg/sdk";
 *     plg.init({ apiKey: "plgpk_...", host: "https://ingest.example.com" });
 *     plg.track("project_created", { project_type: "app" });
 */

import type { Context, Evaluation, FlagValue, ValueType } from "./engine.js";
import { Entitlements, type Entitlement } from "./entitlements.js";
import { type Consent, Events, type EventsOptions, type EventsStats, type Properties } from "./events.js";
import { type ChangeListener, Flags, type FlagsOptions } from "./flags.js";
import { type ActivationEvent, Onboarding, type Step } from "./onboarding.js";

export { bucket, compileDocument, FlagSet, splitBounds } from "./engine.js";
export type { Context, Evaluation, FlagValue, Reason, ValueType } from "./engine.js";
export type { Entitlement, Upgrade } from "./entitlements.js";
export type { Consent, EventsStats, Properties, WireEvent } from "./events.js";
export type { ActivationEvent, Step } from "./onboarding.js";
export { murmur3, murmur3String } from "./murmur3.js";
export { uuidv7 } from "./uuid.js";

/** The tracking plan's versions, as `plg plan codegen --lang ts` writes them (its `TRACKING_PLAN`). */
export interface TrackingPlanVersions {
  /** The plan's own version (deploy/config/tracking-plan.yaml `version`). */
  version: number;
  /** The property enrichment reads an event's version from (the plan's `version_property`). */
  versionProperty: string;
  /** Event name -> its current schema version in the plan. */
  events: Record<string, number>;
}

export interface InitOptions extends EventsOptions {
  /**
   * The tracking plan's versions (`TRACKING_PLAN` of the generated plg-events.ts): every event the plan
   * lists is sent with its version, so enrichment reads its properties by the names that version had
   * instead of assuming a default (an event without one is marked `schema_version_missing`).
   */
  plan?: TrackingPlanVersions;
  /** The growth service (flags, onboarding, activation). Without it flags answer bootstrap/defaults. */
  growthHost?: string;
  /** The entitlements service. Without it checks answer the fallback. */
  entitlementsHost?: string;
  /** The customer (tenant) this app's user belongs to: entitlements and onboarding are per customer. */
  customerId?: string;
  flagsBootstrap?: FlagsOptions["bootstrap"];
  flagsStream?: boolean;
  flagsPollIntervalMs?: number;
  entitlementsTtlMs?: number;
  entitlementsFallback?: boolean | Record<string, boolean>;
}

/** The plg client. `plg` (below) is the page's one instance; `new Plg()` makes others (tests, iframes). */
export class Plg {
  private events: Events | null = null;
  private flagsImpl: Flags | null = null;
  private entitlementsImpl: Entitlements | null = null;
  private onboardingImpl: Onboarding | null = null;
  private traits: Properties = {};
  private attributes: Context = {};
  private options: InitOptions | null = null;

  init(options: InitOptions): this {
    if (this.events) this.events.close();
    this.flagsImpl?.close();
    this.options = options;
    this.events = new Events(options);
    const fetchFn = options.fetch;
    const growth = options.growthHost;
    this.flagsImpl = new Flags(
      {
        host: growth ?? options.host,
        apiKey: options.apiKey,
        fetch: fetchFn,
        stream: options.flagsStream,
        pollIntervalMs: options.flagsPollIntervalMs,
        bootstrap: options.flagsBootstrap,
      },
      () => this.context(),
    );
    const events = this.events;
    // The last-known definitions share the event queue's store, once consent allows storage.
    if (growth) this.flagsImpl.start(() => events.openedStore());
    this.entitlementsImpl = new Entitlements({
      host: options.entitlementsHost ?? options.host,
      customerId: options.customerId,
      apiKey: options.apiKey,
      fetch: fetchFn,
      ttlMs: options.entitlementsTtlMs,
      fallback: options.entitlementsFallback,
    });
    this.onboardingImpl = new Onboarding(
      { host: growth ?? options.host, customerId: options.customerId, apiKey: options.apiKey, fetch: fetchFn },
      () => this.events?.user ?? this.events?.anonymous ?? "anonymous",
    );
    if (!growth) this.onboardingImpl = null;
    return this;
  }

  private need(): Events {
    if (!this.events) throw new Error("plg: call plg.init({ apiKey, host }) first");
    return this.events;
  }

  /** Record an event; returns its event_id (null when dropped: consent denied, or the queue full). */
  track(name: string, properties?: Properties): string | null {
    return this.need().track(name, this.stamp(name, properties));
  }

  /** `properties` with the event's plan version, unless the plan lacks the event or the caller set one. */
  private stamp(name: string, properties?: Properties): Properties | undefined {
    const plan = this.options?.plan;
    const version = plan?.events[name];
    // typeof: a name like "constructor" must not find Object.prototype's member.
    if (!plan || typeof version !== "number" || properties?.[plan.versionProperty] != null) return properties;
    return { ...properties, [plan.versionProperty]: version };
  }

  /** Link this browser's anonymous id to `userId` (POST /v1/identify); later events carry the user. */
  identify(userId: string, traits?: Properties): string | null {
    const id = this.need().identify(userId, this.stamp("$identify", traits));
    this.traits = { ...this.traits, ...traits };
    this.flagsImpl?.notify();
    return id;
  }

  /** A page view: `page_viewed` with the path, title and referrer. */
  page(properties?: Properties): string | null {
    const loc = typeof location !== "undefined" ? location : null;
    return this.track("page_viewed", {
      path: loc?.pathname,
      url: loc?.href,
      title: typeof document !== "undefined" ? document.title : undefined,
      referrer: typeof document !== "undefined" ? document.referrer || undefined : undefined,
      ...properties,
    });
  }

  /** Log-out: a new anonymous id and session, no user, no traits. */
  reset(): void {
    this.need().reset();
    this.traits = {};
    this.entitlementsImpl?.clear();
    this.flagsImpl?.notify();
  }

  flush(): Promise<void> {
    return this.events ? this.events.flush() : Promise.resolve();
  }

  get stats(): EventsStats | null {
    return this.events?.stats ?? null;
  }

  get anonymousId(): string | null {
    return this.events?.anonymous ?? null;
  }

  get userId(): string | null {
    return this.events?.user ?? null;
  }

  /** Events waiting to be sent (or held for consent). */
  pending(): number {
    return this.events?.pending() ?? 0;
  }

  /** Resolves once the queue's current state is written to storage (tests, and before a navigation). */
  persisted(): Promise<void> {
    return this.events ? this.events.persisted() : Promise.resolve();
  }

  private context(): Context {
    const ctx: Context = { ...this.traits, ...this.attributes };
    if (this.events?.user) ctx.user_id = this.events.user;
    if (this.events?.anonymous) ctx.anonymous_id = this.events.anonymous;
    if (this.options?.customerId) ctx.customer_id = this.options.customerId;
    return ctx;
  }

  readonly consent = {
    /** Send what was held (with its original timestamps) and everything after; storage may be used. */
    grant: (purposes?: Record<string, boolean>): Promise<void> => this.need().grant(purposes),
    /** Drop what was held; nothing is sent or stored from now on. */
    deny: (): void => this.need().deny(),
    state: (): Consent | null => this.events?.consent ?? null,
  };

  readonly flags = {
    isEnabled: (key: string, defaultValue = false): boolean => this.flagsImpl?.isEnabled(key, defaultValue) ?? defaultValue,
    variant: (key: string): string | null => this.flagsImpl?.variant(key) ?? null,
    value: <T extends FlagValue>(key: string, defaultValue: T): T => this.flagsImpl?.value(key, defaultValue) ?? defaultValue,
    evaluate: <T extends FlagValue>(key: string, defaultValue: T, type?: ValueType, context?: Context): Evaluation<T> =>
      this.flagsImpl
        ? this.flagsImpl.evaluate(key, defaultValue, type, context)
        : { flagKey: key, value: defaultValue, variant: null, reason: "ERROR", errorCode: "PROVIDER_NOT_READY" },
    onChange: (cb: ChangeListener): (() => void) => this.flagsImpl?.onChange(cb) ?? (() => undefined),
    /** Extra attributes rules may target (plan, country, ...), on top of the identify traits. */
    setContext: (attributes: Context): void => {
      this.attributes = { ...attributes };
      this.flagsImpl?.notify();
    },
    context: (): Context => this.context(),
    ready: (): Promise<void> => this.flagsImpl?.ready() ?? Promise.resolve(),
    refresh: (): Promise<boolean> => this.flagsImpl?.refresh() ?? Promise.resolve(false),
    keys: (): string[] => this.flagsImpl?.keys() ?? [],
  };

  readonly entitlements = {
    check: (feature: string): Promise<Entitlement> =>
      this.entitlementsImpl?.check(feature) ??
      Promise.resolve({ feature, allowed: true, source: "fallback", upgrade: null } as Entitlement),
    peek: (feature: string): Entitlement =>
      this.entitlementsImpl?.peek(feature) ?? { feature, allowed: true, source: "fallback", upgrade: null },
  };

  readonly onboarding = {
    next: (options?: { intent?: string }): Promise<Step | null> =>
      this.onboardingImpl?.next(options) ?? Promise.resolve(null),
    complete: (step: string | Step): Promise<boolean> =>
      this.onboardingImpl?.complete(step) ?? Promise.resolve(false),
    onActivation: (cb: (event: ActivationEvent) => void): (() => void) =>
      this.onboardingImpl?.onActivation(cb) ?? (() => undefined),
  };

  /** Stop timers and streams (tests; single-page apps that tear plg down). */
  close(): void {
    this.events?.close();
    this.flagsImpl?.close();
  }
}

/** The page's plg client. */
export const plg = new Plg();
export default plg;
