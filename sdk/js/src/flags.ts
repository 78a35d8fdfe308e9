/**
 * Feature flags evaluated in the page: the growth service's definitions (GET /v1/flags), kept fresh by its
 * SSE stream with ETag polling as the fallback, evaluated locally by the same engine as the server's.
 * Until the first document arrives, answers come from bootstrap values, else from the last-known
 * definitions saved by an earlier page (when storage is allowed): nothing flickers on a reload.
 */

import {
  compileDocument,
  type Context,
  type Evaluation,
  type FlagSet,
  type FlagValue,
  type StickyStore,
  type ValueType,
} from "./engine.js";
import { backoffMs, type Fetch, fetchWithTimeout, trimSlash } from "./http.js";
import { readEventStream } from "./sse.js";
import type { AsyncStore } from "./storage.js";

export interface FlagsOptions {
  /** The growth service, e.g. https://growth.example.com. */
  host: string;
  apiKey?: string;
  fetch?: Fetch;
  /** Follow GET /v1/flags/stream (default true); polling with ETag is the fallback either way. */
  stream?: boolean;
  pollIntervalMs?: number;
  timeoutMs?: number;
  /** Values to answer before any definitions are known: `{key: value}`, or a whole flags document. */
  bootstrap?: Record<string, FlagValue> | { flags: unknown[] };
}

export type ChangeListener = (changed: string[]) => void;

const DOC_KEY = "flags";

export class Flags {
  private set: FlagSet | null = null;
  private bootstrapValues: Record<string, FlagValue> = {};
  private etag: string | null = null;
  private listeners = new Set<ChangeListener>();
  private last = new Map<string, string>();
  private readonly sticky: StickyStore = new Map();
  private readonly fetchFn: Fetch;
  private readonly host: string;
  private abort: AbortController | null = null;
  private pollTimer: ReturnType<typeof setTimeout> | null = null;
  private readyResolve!: () => void;
  private readonly readyPromise: Promise<void>;
  private started = false;
  private store: (() => Promise<AsyncStore | null>) | null = null;
  /** Definitions loaded from the service (not counting bootstrap or storage). */
  updates = 0;
  source: "none" | "bootstrap" | "storage" | "service" = "none";

  constructor(
    private readonly options: FlagsOptions,
    private readonly context: () => Context,
  ) {
    this.fetchFn = options.fetch ?? ((...args) => fetch(...args));
    this.host = trimSlash(options.host);
    this.readyPromise = new Promise((resolve) => {
      this.readyResolve = resolve;
    });
    const boot = options.bootstrap;
    if (boot && Array.isArray((boot as { flags?: unknown }).flags)) {
      this.set = compileDocument(boot);
      this.source = "bootstrap";
      this.readyResolve();
    } else if (boot) {
      this.bootstrapValues = { ...(boot as Record<string, FlagValue>) };
      this.source = "bootstrap";
    }
  }

  /** Start following the service; `store` (when storage is allowed) keeps the last-known definitions. */
  start(store: () => Promise<AsyncStore | null>): void {
    if (this.started) return;
    this.started = true;
    this.store = store;
    void this.restore();
    if (this.options.stream !== false) void this.follow(0);
    else void this.poll();
  }

  private async restore(): Promise<void> {
    try {
      const store = await this.store?.();
      if (!store || this.set) return;
      const saved = await store.get<{ doc: unknown; etag: string | null }>(DOC_KEY);
      if (saved && !this.set) {
        this.load(saved.doc, "storage");
        this.etag = saved.etag;
      }
    } catch {
      // no last-known definitions: bootstrap values or defaults answer
    }
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    const h: Record<string, string> = { ...extra };
    if (this.options.apiKey) h.Authorization = `Bearer ${this.options.apiKey}`;
    return h;
  }

  private load(doc: unknown, source: "storage" | "service", etag?: string | null): void {
    this.set = compileDocument(doc);
    this.source = source;
    if (source === "service") {
      this.updates++;
      void this.store?.()
        .then((store) => store?.set(DOC_KEY, { doc, etag: etag ?? null }))
        .catch(() => undefined);
    }
    this.readyResolve();
    this.notify();
  }

  /** One conditional GET /v1/flags; true when new definitions were loaded. */
  async refresh(): Promise<boolean> {
    const headers = this.headers({ Accept: "application/json" });
    if (this.etag) headers["If-None-Match"] = this.etag;
    const response = await fetchWithTimeout(
      this.fetchFn,
      `${this.host}/v1/flags`,
      { headers, credentials: "omit" },
      this.options.timeoutMs ?? 5000,
    );
    if (response.status === 304) return false;
    if (!response.ok) throw new Error(`GET /v1/flags answered ${response.status}`);
    this.etag = response.headers.get("ETag");
    this.load(await response.json(), "service", this.etag);
    return true;
  }

  private async poll(): Promise<void> {
    try {
      await this.refresh();
    } catch {
      // keep the last definitions; try again at the next tick
    }
    if (this.started) this.pollTimer = setTimeout(() => void this.poll(), this.options.pollIntervalMs ?? 30_000);
  }

  private async follow(attempt: number): Promise<void> {
    while (this.started) {
      this.abort = new AbortController();
      try {
        const response = await this.fetchFn(`${this.host}/v1/flags/stream`, {
          headers: this.headers({ Accept: "text/event-stream" }),
          signal: this.abort.signal,
          credentials: "omit",
        });
        if (!response.ok) throw new Error(`GET /v1/flags/stream answered ${response.status}`);
        attempt = 0;
        await readEventStream(
          response,
          (m) => {
            if (m.event === "flags") this.load(JSON.parse(m.data), "service");
          },
          this.abort.signal,
        );
      } catch {
        if (!this.started) return;
        // The stream is unavailable (a proxy that buffers, the service down): poll once, back off.
        try {
          await this.refresh();
        } catch {
          // offline: the last-known definitions keep answering
        }
      }
      attempt++;
      const delay = backoffMs(attempt, 1000, this.options.pollIntervalMs ?? 30_000);
      await new Promise((r) => {
        this.pollTimer = setTimeout(r, delay);
      });
    }
  }

  ready(): Promise<void> {
    return this.readyPromise;
  }

  evaluate<T extends FlagValue>(key: string, defaultValue: T, type?: ValueType, extra?: Context): Evaluation<T> {
    const ctx = extra ? { ...this.context(), ...extra } : this.context();
    if (!this.set) {
      if (key in this.bootstrapValues) {
        return { flagKey: key, value: this.bootstrapValues[key] as T, variant: null, reason: "CACHED" };
      }
      return {
        flagKey: key,
        value: defaultValue,
        variant: null,
        reason: "ERROR",
        errorCode: "PROVIDER_NOT_READY",
        errorMessage: "no flag definitions yet",
      };
    }
    return this.set.evaluate<T>(key, ctx, defaultValue, type, this.sticky);
  }

  isEnabled(key: string, defaultValue = false): boolean {
    return this.evaluate<boolean>(key, defaultValue, "boolean").value === true;
  }

  variant(key: string): string | null {
    const answer = this.evaluate<FlagValue>(key, null);
    return answer.variant;
  }

  value<T extends FlagValue>(key: string, defaultValue: T): T {
    return this.evaluate<T>(key, defaultValue).value;
  }

  keys(): string[] {
    return this.set ? this.set.keys() : Object.keys(this.bootstrapValues);
  }

  /** `cb(changedKeys)` whenever new definitions or a new context change a flag's value. */
  onChange(cb: ChangeListener): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  /** Re-evaluate every flag for the current context (new definitions, identify, reset) and tell the
   * listeners which values changed since the last time. */
  notify(): void {
    if (!this.set) return;
    const ctx = this.context();
    const changed: string[] = [];
    const now = new Map<string, string>();
    for (const key of this.set.keys()) {
      now.set(key, JSON.stringify(this.set.evaluate(key, ctx, null, undefined, this.sticky).value));
    }
    for (const key of new Set([...now.keys(), ...this.last.keys()])) {
      if (now.get(key) !== this.last.get(key)) changed.push(key);
    }
    this.last = now;
    if (!changed.length) return;
    for (const cb of this.listeners) {
      try {
        cb(changed);
      } catch {
        // a listener's error is the app's; it must not stop the others
      }
    }
  }

  close(): void {
    this.started = false;
    this.abort?.abort();
    if (this.pollTimer) clearTimeout(this.pollTimer);
  }
}
