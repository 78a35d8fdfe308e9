/**
 * Entitlements in the page: GET /v1/entitlements/{customer}/{feature}, cached for a TTL, answered from the
 * last-known state (or a configured fallback) while the service cannot be reached, never blocking
 * rendering: `peek()` answers synchronously and refreshes in the background.
 */

import { type Fetch, fetchWithTimeout, trimSlash } from "./http.js";

/** The structured refusal (docs/entitlements.md): why, where to upgrade, to which plan. */
export interface Upgrade {
  code: "usage_limit_exceeded" | "feature_not_in_plan" | string;
  upgrade_url: string;
  suggested_plan: string | null;
}

export interface Entitlement {
  feature: string;
  allowed: boolean;
  /** live: just asked; cache: within the TTL; stale: last-known, the service unreachable; fallback: never known. */
  source: "live" | "cache" | "stale" | "fallback";
  upgrade: Upgrade | null;
  usage?: number | null;
  limit?: number | null;
  remaining?: number | null;
  plan?: string;
  /** Why the service refused the question itself (unknown feature, customer, ...) when it did. */
  error?: { status: number; code: string; message: string };
}

export interface EntitlementsOptions {
  host: string;
  customerId?: string;
  apiKey?: string;
  fetch?: Fetch;
  ttlMs?: number;
  timeoutMs?: number;
  /** The answer for a feature never seen while the service is unreachable: a boolean, or per feature. */
  fallback?: boolean | Record<string, boolean>;
}

export class Entitlements {
  private cache = new Map<string, { at: number; value: Entitlement }>();
  private inflight = new Map<string, Promise<Entitlement>>();
  private readonly fetchFn: Fetch;
  private readonly host: string;

  constructor(private readonly options: EntitlementsOptions) {
    this.fetchFn = options.fetch ?? ((...args) => fetch(...args));
    this.host = trimSlash(options.host);
  }

  private fallback(feature: string): Entitlement {
    const f = this.options.fallback;
    const allowed = typeof f === "boolean" ? f : (f?.[feature] ?? true);
    return { feature, allowed, source: "fallback", upgrade: null };
  }

  /** The answer now, without waiting: cached, last-known or the fallback; refreshes when expired. */
  peek(feature: string): Entitlement {
    const hit = this.cache.get(feature);
    const ttl = this.options.ttlMs ?? 60_000;
    if (hit && Date.now() - hit.at < ttl) return { ...hit.value, source: "cache" };
    void this.check(feature);
    return hit ? { ...hit.value, source: "stale" } : this.fallback(feature);
  }

  /** Ask (or answer from the cache within the TTL). Never rejects: an unreachable service answers the
   * last-known state, else the fallback. */
  check(feature: string): Promise<Entitlement> {
    const hit = this.cache.get(feature);
    const ttl = this.options.ttlMs ?? 60_000;
    if (hit && Date.now() - hit.at < ttl) return Promise.resolve({ ...hit.value, source: "cache" });
    let pending = this.inflight.get(feature);
    if (!pending) {
      pending = this.ask(feature).finally(() => this.inflight.delete(feature));
      this.inflight.set(feature, pending);
    }
    return pending;
  }

  private async ask(feature: string): Promise<Entitlement> {
    const customer = this.options.customerId;
    if (!customer) return this.fallback(feature);
    const headers: Record<string, string> = { Accept: "application/json" };
    if (this.options.apiKey) headers.Authorization = `Bearer ${this.options.apiKey}`;
    try {
      const response = await fetchWithTimeout(
        this.fetchFn,
        `${this.host}/v1/entitlements/${encodeURIComponent(customer)}/${encodeURIComponent(feature)}`,
        { headers, credentials: "omit" },
        this.options.timeoutMs ?? 2000,
      );
      const body = (await response.json()) as Record<string, unknown>;
      if (response.ok) {
        const value: Entitlement = {
          feature,
          allowed: body.allowed === true,
          source: "live",
          upgrade: (body.upgrade as Upgrade | null) ?? null,
          usage: body.usage as number | null,
          limit: body.limit as number | null,
          remaining: body.remaining as number | null,
          plan: body.plan as string,
        };
        this.cache.set(feature, { at: Date.now(), value });
        return value;
      }
      if (response.status >= 400 && response.status < 500 && response.status !== 408 && response.status !== 429) {
        // The question is wrong (unknown feature or customer): say so, with the fallback's answer.
        return {
          ...this.fallback(feature),
          error: { status: response.status, code: String(body.code), message: String(body.message) },
        };
      }
      throw new Error(`entitlements answered ${response.status}`);
    } catch {
      const last = this.cache.get(feature);
      return last ? { ...last.value, source: "stale" } : this.fallback(feature);
    }
  }

  clear(): void {
    this.cache.clear();
  }
}
