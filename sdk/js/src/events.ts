/**
 * Events: ids, identity, sessions, consent, the persistent queue and delivery to ingest.
 *
 * Delivery is at least once with a stable `event_id` (UUIDv7, made at `track()`), and the queue is built
 * so that "at least" is "exactly" in every case a page can observe: an event leaves the queue only when
 * ingest answered for it, retries reuse the id, and on page hide the events handed to the browser's
 * keepalive requests are written down synchronously (localStorage) so that the next page does not send them
 * again. The one case left is a network that fails in the very moment the page goes away: the keepalive
 * request is lost with nobody to see it (docs/sdk.md, "Delivery").
 */

import { backoffMs, type Fetch, retryAfterMs, trimSlash } from "./http.js";
import { type AsyncStore, openStore, webStorage } from "./storage.js";
import { uuidv7 } from "./uuid.js";

export type Consent = "granted" | "pending" | "denied";
export type Properties = Record<string, string | number | boolean | null | undefined>;

/** An event as ingest's JSON API takes it (docs/ingest.md). */
export interface WireEvent {
  event_id: string;
  type?: "track" | "identify";
  name?: string;
  timestamp: number;
  properties?: Properties;
  user_id?: string;
  anonymous_id?: string;
  session_id?: string;
  /** Purpose -> granted (the privacy contract, docs/ingest.md). */
  consent?: Record<string, boolean>;
}

export interface EventsOptions {
  apiKey: string;
  host: string;
  flushAt?: number;
  flushIntervalMs?: number;
  consent?: Consent;
  /** The purposes a grant covers (sent with every event as `consent`); default `{analytics: true}`. */
  consentPurposes?: Record<string, boolean>;
  /** Set false to leave the `consent` field out of events (an ingest older than the consent field). */
  sendConsent?: boolean;
  maxQueueSize?: number;
  onFull?: "drop_newest" | "drop_oldest";
  sessionTimeoutMs?: number;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Events per request (also bounded to ~60 KB, the browsers' keepalive budget). */
  maxBatchEvents?: number;
  fetch?: Fetch;
  /** Replaces the persistent store (tests; server-side rendering). */
  store?: AsyncStore;
  /** Replaces localStorage for ids, session and the hand-off list (tests). */
  syncStorage?: Storage | null;
}

export interface EventsStats {
  queued: number;
  sent: number;
  rejected: number;
  /** Dropped because the queue was full (the bound, not a failure to send). */
  droppedQueueFull: number;
  /** Dropped because consent was denied. */
  droppedConsent: number;
  requests: number;
  retries: number;
  lastError: string | null;
  storage: string;
}

interface Queued {
  kind: "track" | "identify";
  event: WireEvent;
}

const KEEPALIVE_BYTES = 60_000; // browsers refuse keepalive bodies over 64 KiB in flight per page
const QUEUE_KEY = "queue";
// Request.keepalive exists where fetch keepalive works (Chromium, Safari, Firefox since 133).
const KEEPALIVE = typeof Request !== "undefined" && "keepalive" in Request.prototype;

function keyNamespace(apiKey: string): string {
  // plg_<id>_<secret> / plgpk_<id>_<secret>: the id is public and tells projects apart in one browser.
  const parts = apiKey.split("_");
  return parts.length >= 3 ? parts[1] : "default";
}

export class Events {
  readonly stats: EventsStats;
  private readonly opts: Required<
    Omit<EventsOptions, "fetch" | "store" | "syncStorage" | "consentPurposes">
  >;
  private readonly fetchFn: Fetch;
  private readonly ns: string;
  private readonly ls: Storage | null;
  private consentState: Consent;
  private purposes: Record<string, boolean>;
  private queue: Queued[] = [];
  private held: Queued[] = []; // consent pending: memory only, original timestamps kept
  private inflight = new Set<string>();
  private store: AsyncStore | null = null;
  private storeReady: Promise<void> | null = null;
  private persisting: Promise<void> = Promise.resolve();
  private flushing: Promise<void> | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private attempt = 0;
  private notBefore = 0; // a server's Retry-After, which even an explicit flush() honours
  private online: boolean;
  private maxBatch: number;
  private anonymousId: string;
  private userId: string | null;
  private session: { id: string; last: number } | null = null;
  private readonly injectedStore: AsyncStore | undefined;
  private closed = false;

  constructor(options: EventsOptions) {
    if (!options.apiKey) throw new Error("plg: init needs an apiKey (a publishable key, plgpk_...)");
    if (!options.host) throw new Error("plg: init needs the ingest host, e.g. https://ingest.example.com");
    this.opts = {
      apiKey: options.apiKey,
      host: trimSlash(options.host),
      flushAt: options.flushAt ?? 20,
      flushIntervalMs: options.flushIntervalMs ?? 2000,
      consent: options.consent ?? "granted",
      sendConsent: options.sendConsent ?? true,
      maxQueueSize: options.maxQueueSize ?? 1000,
      onFull: options.onFull ?? "drop_newest",
      sessionTimeoutMs: options.sessionTimeoutMs ?? 30 * 60 * 1000,
      backoffBaseMs: options.backoffBaseMs ?? 500,
      backoffMaxMs: options.backoffMaxMs ?? 60_000,
      maxBatchEvents: options.maxBatchEvents ?? 100,
    };
    this.fetchFn = options.fetch ?? ((...args) => fetch(...args));
    this.ns = keyNamespace(options.apiKey);
    this.ls = options.syncStorage !== undefined ? options.syncStorage : webStorage();
    this.injectedStore = options.store;
    this.consentState = this.opts.consent;
    this.purposes = { ...(options.consentPurposes ?? { analytics: true }) };
    this.maxBatch = this.opts.maxBatchEvents;
    this.online = typeof navigator === "undefined" || navigator.onLine !== false;
    this.stats = {
      queued: 0,
      sent: 0,
      rejected: 0,
      droppedQueueFull: 0,
      droppedConsent: 0,
      requests: 0,
      retries: 0,
      lastError: null,
      storage: "none",
    };
    const granted = this.consentState === "granted";
    this.anonymousId = (granted && this.read("anon")) || uuidv7();
    this.userId = granted ? this.read("user") : null;
    if (granted) {
      this.write("anon", this.anonymousId);
      this.openStorage();
    }
    this.listenForPageHide();
  }

  // -- small synchronous values (ids, session) ------------------------------------------------------------

  private read(key: string): string | null {
    try {
      return this.ls?.getItem(`plg:${this.ns}:${key}`) ?? null;
    } catch {
      return null;
    }
  }

  private write(key: string, value: string | null): void {
    if (this.consentState !== "granted") return; // pending/denied: nothing is written to storage
    try {
      if (value === null) this.ls?.removeItem(`plg:${this.ns}:${key}`);
      else this.ls?.setItem(`plg:${this.ns}:${key}`, value);
    } catch {
      // storage full or forbidden: ids then live for this page only
    }
  }

  get anonymous(): string {
    return this.anonymousId;
  }

  get user(): string | null {
    return this.userId;
  }

  get consent(): Consent {
    return this.consentState;
  }

  /** The session id: kept across reloads, a new one after `sessionTimeoutMs` without an event. */
  sessionId(now: number = Date.now()): string {
    if (!this.session) {
      const raw = this.read("session");
      if (raw) {
        try {
          this.session = JSON.parse(raw) as { id: string; last: number };
        } catch {
          this.session = null;
        }
      }
    }
    if (!this.session || now - this.session.last > this.opts.sessionTimeoutMs) {
      this.session = { id: uuidv7(now), last: now };
    }
    this.session.last = now;
    this.write("session", JSON.stringify(this.session));
    return this.session.id;
  }

  // -- the queue's persistence ----------------------------------------------------------------------------

  private openStorage(): void {
    if (this.storeReady) return;
    this.storeReady = (async () => {
      try {
        this.store = this.injectedStore ?? (await openStore(this.ns));
        this.stats.storage = this.store.kind;
        const saved = (await this.store.get<Queued[]>(QUEUE_KEY)) ?? [];
        const handed = new Set(this.handedOff());
        const present = new Set(this.queue.map((q) => q.event.event_id));
        // What the last page handed to keepalive requests was delivered (or lost with the page): never
        // send it twice. What it left queued comes first, in its order.
        const restored = saved.filter((q) => !handed.has(q.event.event_id) && !present.has(q.event.event_id));
        this.queue = [...restored, ...this.queue];
        this.trim();
        await this.store.set(QUEUE_KEY, this.queue);
        this.setHandedOff([]);
        this.stats.queued = this.queue.length;
        if (this.queue.length) this.schedule(0);
      } catch (error) {
        this.stats.lastError = `storage: ${String(error)}`;
      }
    })();
  }

  /** Resolves true once the queue as it is now is stored (false: no storage, or the write failed). */
  private persist(): Promise<boolean> {
    if (!this.storeReady) return Promise.resolve(false);
    // One write at a time, each of the whole (bounded) queue: simple, and the last write always wins.
    const write = this.persisting
      .then(() => this.storeReady)
      .then(() => this.store?.set(QUEUE_KEY, this.queue))
      .then(
        () => true,
        (error) => {
          this.stats.lastError = `storage: ${String(error)}`;
          return false;
        },
      );
    this.persisting = write.then(() => undefined);
    return write;
  }

  private handedOff(): string[] {
    const raw = this.read("handed");
    if (!raw) return [];
    try {
      return JSON.parse(raw) as string[];
    } catch {
      return [];
    }
  }

  private setHandedOff(ids: string[]): void {
    this.write("handed", ids.length ? JSON.stringify(ids) : null);
  }

  // -- recording --------------------------------------------------------------------------------------------

  track(name: string, properties?: Properties, overrides?: Partial<WireEvent>): string | null {
    if (typeof name !== "string" || !name || name.startsWith("$")) {
      throw new Error(`plg: event name ${JSON.stringify(name)}: a non-empty name not starting with '$'`);
    }
    const now = Date.now();
    const event: WireEvent = {
      event_id: uuidv7(now),
      type: "track",
      name,
      timestamp: now,
      properties: clean(properties),
      anonymous_id: this.anonymousId,
      session_id: this.sessionId(now),
      ...overrides,
    };
    if (this.userId) event.user_id = this.userId;
    return this.enqueue({ kind: "track", event });
  }

  identify(userId: string, traits?: Properties): string | null {
    if (typeof userId !== "string" || !userId) throw new Error("plg: identify needs a user id");
    const now = Date.now();
    const event: WireEvent = {
      event_id: uuidv7(now),
      type: "identify",
      timestamp: now,
      user_id: userId,
      anonymous_id: this.anonymousId,
      session_id: this.sessionId(now),
      properties: clean(traits),
    };
    // Events already queued keep the ids they were tracked with; only later ones carry the user.
    this.userId = userId;
    this.write("user", userId);
    return this.enqueue({ kind: "identify", event });
  }

  /** Log-out: a new anonymous id and session, no user. Queued events are not touched. */
  reset(): void {
    this.userId = null;
    this.anonymousId = uuidv7();
    this.session = null;
    this.write("user", null);
    this.write("anon", this.anonymousId);
    this.write("session", null);
  }

  private enqueue(item: Queued): string | null {
    if (this.consentState === "denied") {
      this.stats.droppedConsent++;
      return null;
    }
    const target = this.consentState === "pending" ? this.held : this.queue;
    if (this.queue.length + this.held.length >= this.opts.maxQueueSize) {
      this.stats.droppedQueueFull++;
      if (this.opts.onFull === "drop_newest") return null;
      const oldest = (target.length ? target : this.queue).findIndex((q) => !this.inflight.has(q.event.event_id));
      if (oldest < 0) return null;
      (target.length ? target : this.queue).splice(oldest, 1);
    }
    target.push(item);
    if (target === this.queue) {
      this.stamp(item);
      this.stats.queued = this.queue.length;
      void this.persist();
      this.schedule(this.queue.length >= this.opts.flushAt ? 0 : this.opts.flushIntervalMs);
    }
    return item.event.event_id;
  }

  private stamp(item: Queued): void {
    if (this.opts.sendConsent) item.event.consent = { ...this.purposes };
  }

  private trim(): void {
    const over = this.queue.length - this.opts.maxQueueSize;
    if (over > 0) {
      this.stats.droppedQueueFull += over;
      this.queue.splice(0, over);
    }
  }

  // -- consent -----------------------------------------------------------------------------------------------

  grant(purposes?: Record<string, boolean>): Promise<void> {
    if (purposes) this.purposes = { ...this.purposes, ...purposes };
    const was = this.consentState;
    this.consentState = "granted";
    if (was !== "granted") {
      this.write("anon", this.anonymousId);
      if (this.userId) this.write("user", this.userId);
      if (this.session) this.write("session", JSON.stringify(this.session));
      for (const item of this.held) this.stamp(item);
      this.queue.push(...this.held);
      this.held = [];
      this.trim();
      this.stats.queued = this.queue.length;
      this.openStorage();
    }
    return this.flush();
  }

  deny(): void {
    this.stats.droppedConsent += this.held.length + this.queue.length;
    this.held = [];
    this.queue = [];
    this.stats.queued = 0;
    void this.persist();
    this.consentState = "denied";
  }

  // -- delivery ----------------------------------------------------------------------------------------------

  private schedule(delayMs: number): void {
    if (this.closed || this.consentState !== "granted") return;
    if (this.timer && delayMs > 0) return; // a flush is already planned
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.flush();
    }, delayMs);
  }

  /** Send everything queued now. Resolves when ingest answered for it, or when an attempt failed (the
   * events stay queued and are retried with backoff). Never rejects. */
  flush(): Promise<void> {
    if (this.consentState !== "granted") return Promise.resolve();
    if (!this.flushing) {
      this.flushing = this.drain().finally(() => {
        this.flushing = null;
      });
    }
    return this.flushing;
  }

  private async drain(): Promise<void> {
    await this.storeReady;
    await this.persisting;
    const wait = this.notBefore - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    for (;;) {
      const batch = this.nextBatch();
      if (!batch.length) return;
      const ok = await this.send(batch, false);
      if (!ok) {
        this.retryLater();
        return;
      }
    }
  }

  private nextBatch(): Queued[] {
    const batch: Queued[] = [];
    let bytes = 20;
    for (const item of this.queue) {
      if (this.inflight.has(item.event.event_id)) continue;
      // identify goes alone to /v1/identify; a batch never crosses one (order: identify, then what follows)
      if (item.kind === "identify") return batch.length ? batch : [item];
      const size = JSON.stringify(item.event).length + 1;
      if (batch.length && (batch.length >= this.maxBatch || bytes + size > KEEPALIVE_BYTES)) break;
      batch.push(item);
      bytes += size;
    }
    return batch;
  }

  private retryLater(): void {
    if (this.closed) return;
    this.attempt++;
    this.stats.retries++;
    const delay = Math.max(
      backoffMs(this.attempt, this.opts.backoffBaseMs, this.opts.backoffMaxMs),
      this.notBefore - Date.now(),
    );
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.flush();
    }, delay);
  }

  /** One request for `batch`; true when ingest answered for every event in it (accepted or refused). */
  private async send(batch: Queued[], handOff: boolean): Promise<boolean> {
    const identify = batch[0].kind === "identify";
    const body = JSON.stringify(identify ? batch[0].event : { batch: batch.map((q) => q.event) });
    const ids = batch.map((q) => q.event.event_id);
    for (const id of ids) this.inflight.add(id);
    this.stats.requests++;
    let response: Response;
    try {
      response = await this.fetchFn(`${this.opts.host}${identify ? "/v1/identify" : "/v1/batch"}`, {
        method: "POST",
        headers: {
          Authorization: `Bearer ${this.opts.apiKey}`,
          "Content-Type": "application/json",
        },
        body,
        // keepalive: a request under way when the page goes away still completes.
        keepalive: body.length < KEEPALIVE_BYTES,
        credentials: "omit",
        mode: "cors",
      });
    } catch (error) {
      this.online = false;
      this.stats.lastError = `network: ${String(error)}`;
      this.release(ids, handOff);
      return false;
    }
    this.online = true;
    const status = response.status;
    if (status >= 200 && status < 300) {
      let rejected = 0;
      try {
        const answer = (await response.json()) as {
          results?: Array<{ status?: string; code?: string; message?: string }>;
        };
        const refused = (answer.results ?? []).filter((r) => r.status === "rejected");
        rejected = refused.length;
        // Refused events are final (their shape or time is wrong): counted, and the last reason kept.
        if (refused.length) this.stats.lastError = `rejected: ${refused[0].code}: ${refused[0].message}`;
      } catch {
        // an unreadable 2xx still means ingest took the request
      }
      this.done(ids, batch.length - rejected, rejected);
      this.attempt = 0;
      return true;
    }
    let text = "";
    try {
      text = await response.text();
    } catch {
      // ignore
    }
    this.stats.lastError = `HTTP ${status}: ${text.slice(0, 200)}`;
    if (status === 413 && batch.length > 1) {
      this.maxBatch = Math.max(1, Math.floor(batch.length / 2));
      this.release(ids, handOff);
      return true; // not a failure of the network: try again at once, smaller
    }
    if (status === 400 || status === 413 || status === 415 || status === 422) {
      // The request itself is refused and would be refused again: drop it, counted.
      this.done(ids, 0, batch.length);
      return true;
    }
    // 401/403/404 (a key or URL an operator will fix), 408, 429 and 5xx: keep the events, retry later.
    this.notBefore = Date.now() + retryAfterMs(response.headers.get("Retry-After"));
    this.release(ids, handOff);
    return false;
  }

  private release(ids: string[], handOff: boolean): void {
    for (const id of ids) this.inflight.delete(id);
    if (handOff) {
      const gone = new Set(ids);
      this.setHandedOff(this.handedOff().filter((id) => !gone.has(id)));
    }
  }

  private done(ids: string[], sent: number, rejected: number): void {
    const gone = new Set(ids);
    for (const id of ids) this.inflight.delete(id);
    this.queue = this.queue.filter((q) => !gone.has(q.event.event_id));
    this.stats.sent += sent;
    this.stats.rejected += rejected;
    this.stats.queued = this.queue.length;
    // The stored queue loses these events only when the write below commits, asynchronously: a page that
    // goes away first (a reload right after a flush) would leave them stored for the next page to send
    // again. So they join the handed-off ids, written synchronously, until the write is done.
    this.setHandedOff([...new Set([...this.handedOff(), ...ids])]);
    void this.persist().then((stored) => {
      if (stored) this.setHandedOff(this.handedOff().filter((id) => !gone.has(id)));
    });
  }

  // -- page hide ----------------------------------------------------------------------------------------------

  private listenForPageHide(): void {
    if (typeof addEventListener !== "function" || typeof document === "undefined") return;
    const hide = () => this.handOff();
    addEventListener("pagehide", hide);
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") hide();
    });
    addEventListener("online", () => {
      this.attempt = 0;
      void this.flush();
    });
  }

  /**
   * The page may be going away: hand what is queued to keepalive requests, which the browser completes
   * after the page is gone, and write their ids down synchronously so the next page does not send them
   * again. Only while the last request went through: offline, the events stay queued for the next page.
   */
  handOff(): void {
    if (this.consentState !== "granted" || !this.online || !this.ls || !this.queue.length) return;
    // A browser without keepalive cancels the requests with the page: hand nothing off (no loss), the next
    // page sends what is queued.
    if (!KEEPALIVE) return;
    const handed = new Set(this.handedOff());
    for (const id of this.inflight) handed.add(id); // keepalive requests already under way
    const pending: Queued[][] = [];
    for (;;) {
      const batch = this.nextBatch();
      if (!batch.length) break;
      for (const q of batch) {
        handed.add(q.event.event_id);
        this.inflight.add(q.event.event_id); // so nextBatch moves on
      }
      pending.push(batch);
    }
    this.setHandedOff([...handed]);
    for (const batch of pending) {
      for (const q of batch) this.inflight.delete(q.event.event_id);
      void this.send(batch, true);
    }
  }

  /** The persistent store once consent allows storage and it is open; null otherwise. */
  async openedStore(): Promise<AsyncStore | null> {
    if (this.consentState !== "granted" || !this.storeReady) return null;
    await this.storeReady;
    return this.store;
  }

  /** Events waiting (queued or held for consent). */
  pending(): number {
    return this.queue.length + this.held.length;
  }

  /** Resolves once the queue's current state is in storage. */
  async persisted(): Promise<void> {
    await this.storeReady;
    await this.persist();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
  }
}

function clean(properties?: Properties): Properties | undefined {
  if (!properties) return undefined;
  const out: Properties = {};
  for (const [k, v] of Object.entries(properties)) {
    if (v === undefined) continue;
    if (v !== null && typeof v === "object") {
      throw new Error(`plg: property ${k} is an object; properties are flat (send nested data as a string)`);
    }
    if (typeof v === "number" && !Number.isFinite(v)) throw new Error(`plg: property ${k} is not a finite number`);
    out[k] = v;
  }
  return out;
}
