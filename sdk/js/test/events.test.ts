// The event queue against a real HTTP server on loopback that answers as each test scripts.
import assert from "node:assert/strict";
import { after, afterEach, before, beforeEach, test } from "node:test";
import { Events } from "../src/events.js";
import { MemoryStore } from "../src/storage.js";
import { accept, KEY, MemoryStorage, TestServer, waitFor } from "./helpers.js";

let server: TestServer;
const opened: Events[] = [];
before(async () => {
  server = await new TestServer().start();
});
after(async () => {
  await server.stop();
});
afterEach(() => {
  for (const e of opened.splice(0)) e.close();
});
beforeEach(() => {
  server.seen = [];
  server.handler = accept;
});

function events(overrides: Partial<ConstructorParameters<typeof Events>[0]> = {}): Events {
  const e = new Events({
    apiKey: KEY,
    host: server.url,
    flushIntervalMs: 20,
    backoffBaseMs: 20,
    backoffMaxMs: 200,
    store: new MemoryStore(),
    syncStorage: new MemoryStorage(),
    ...overrides,
  });
  opened.push(e);
  return e;
}

test("events are batched, carry a UUIDv7 id, session, anonymous id and consent purpose", async () => {
  const e = events({ flushAt: 5, flushIntervalMs: 10_000 });
  for (let i = 0; i < 5; i++) e.track("project_created", { project_type: "app", n: i });
  await waitFor(() => e.stats.sent === 5, 3000, "5 sent");
  assert.equal(server.seen.length, 1, "one request for a full batch");
  const [req] = server.seen;
  assert.equal(req.headers.authorization, `Bearer ${KEY}`);
  const batch = JSON.parse(req.body).batch;
  assert.equal(batch.length, 5);
  for (const ev of batch) {
    assert.match(ev.event_id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(ev.anonymous_id, e.anonymous);
    assert.ok(ev.session_id);
    assert.deepEqual(ev.consent, { analytics: true });
    assert.equal(typeof ev.timestamp, "number");
  }
  assert.equal(e.pending(), 0);
});

test("a 503 with Retry-After is retried after it, with the same event ids", async () => {
  let calls = 0;
  server.handler = (req, res) => {
    calls++;
    if (calls === 1) {
      res.writeHead(503, { "Retry-After": "1", "Content-Type": "application/json" });
      res.end('{"code":"kafka_unavailable"}');
      return;
    }
    accept(req, res);
  };
  const e = events();
  const ids = [e.track("a"), e.track("b")];
  await waitFor(() => e.stats.sent === 2, 5000, "delivered after the retry");
  assert.equal(server.seen.length, 2);
  assert.ok(server.seen[1].at - server.seen[0].at >= 950, "waited for Retry-After");
  assert.deepEqual(server.eventIds(), [...ids, ...ids]);
  assert.equal(e.stats.retries, 1);
});

test("a lost connection is retried with backoff under the same ids; nothing duplicates once answered", async () => {
  let calls = 0;
  server.handler = (req, res) => {
    calls++;
    if (calls <= 2) {
      res.socket?.destroy(); // the request arrived, the answer never does
      return;
    }
    accept(req, res);
  };
  const e = events();
  const id = e.track("a");
  await waitFor(() => e.stats.sent === 1, 5000);
  assert.deepEqual(server.eventIds(), [id, id, id]);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(server.seen.length, 3, "no request after the answer");
});

test("a 400 drops the batch (counted); a 413 halves it", async () => {
  server.handler = (req, res) => {
    const n = JSON.parse(req.body).batch.length;
    if (n > 2) {
      res.writeHead(413).end("{}");
      return;
    }
    if (JSON.parse(req.body).batch.some((ev: { name: string }) => ev.name === "bad")) {
      res.writeHead(400).end('{"code":"invalid_body"}');
      return;
    }
    accept(req, res);
  };
  const e = events({ flushAt: 4, flushIntervalMs: 10_000 });
  e.track("x");
  e.track("y");
  e.track("bad");
  e.track("z");
  await waitFor(() => e.pending() === 0, 3000);
  assert.equal(e.stats.sent, 2);
  assert.equal(e.stats.rejected, 2);
});

test("consent pending: nothing is sent and nothing is stored until grant, which keeps the timestamps", async () => {
  const storage = new MemoryStorage();
  const store = new MemoryStore();
  const e = events({ consent: "pending", syncStorage: storage, store });
  const t0 = Date.now();
  e.track("a");
  e.identify("u-1");
  e.track("b");
  await new Promise((r) => setTimeout(r, 100));
  await e.flush();
  assert.equal(server.seen.length, 0, "nothing left before grant");
  assert.equal(storage.writes, 0, "nothing written to localStorage");
  assert.equal(await store.get("queue"), undefined, "nothing written to the queue store");
  assert.equal(e.pending(), 3);
  await new Promise((r) => setTimeout(r, 50));
  await e.grant();
  await waitFor(() => e.stats.sent === 3, 3000);
  const sent = server.seen.flatMap((s) => (s.path === "/v1/batch" ? JSON.parse(s.body).batch : [JSON.parse(s.body)]));
  for (const ev of sent) assert.ok(ev.timestamp >= t0 && ev.timestamp < t0 + 100, "original timestamp");
  assert.equal(sent[0].name, "a");
  assert.equal(sent[0].user_id, undefined, "a was tracked before identify");
  assert.equal(sent[2].user_id, "u-1");
  assert.ok(storage.writes > 0);
});

test("consent denied: held events are dropped and later ones never sent", async () => {
  const e = events({ consent: "pending" });
  e.track("a");
  e.deny();
  assert.equal(e.track("b"), null);
  await e.flush();
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(server.seen.length, 0);
  assert.equal(e.stats.droppedConsent, 2);
});

test("the queue survives a reload (same store) and is bounded with counted drops", async () => {
  server.handler = (_req, res) => {
    res.writeHead(503, { "Retry-After": "60" }).end();
  };
  const store = new MemoryStore();
  const storage = new MemoryStorage();
  const first = events({ store, syncStorage: storage, maxQueueSize: 3 });
  const ids = [first.track("a"), first.track("b"), first.track("c")];
  assert.equal(first.track("d"), null, "drop_newest keeps what is queued");
  assert.equal(first.stats.droppedQueueFull, 1);
  await first.persisted();
  first.close();
  server.handler = accept;
  server.seen = [];
  const second = events({ store, syncStorage: storage, maxQueueSize: 3 });
  assert.equal(second.anonymous, first.anonymous, "the anonymous id survives too");
  await waitFor(() => second.stats.sent === 3, 3000, "the reloaded queue delivered");
  assert.deepEqual(server.eventIds(), ids);
});

test("events delivered just before a reload are not sent again when the stored queue missed the removal", async () => {
  server.handler = (_req, res) => {
    res.writeHead(503, { "Retry-After": "0" }).end();
  };
  // A store whose writes can stop committing, as an IndexedDB transaction does when the page goes away.
  class FreezableStore extends MemoryStore {
    frozen = false;
    override async set(key: string, value: unknown): Promise<void> {
      if (this.frozen) return new Promise<void>(() => {}); // never commits
      return super.set(key, value);
    }
  }
  const store = new FreezableStore();
  const storage = new MemoryStorage();
  const first = events({ store, syncStorage: storage, flushIntervalMs: 10_000 });
  const ids = [first.track("a"), first.track("b"), first.track("c")];
  await first.flush();
  await first.persisted(); // the three are stored, undelivered
  store.frozen = true;
  server.handler = accept;
  server.seen = [];
  await first.flush();
  await waitFor(() => first.stats.sent === 3, 3000, "delivered");
  first.close(); // the page goes away before the stored queue lost them

  store.frozen = false;
  const second = events({ store, syncStorage: storage, flushIntervalMs: 20 });
  await second.persisted();
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(second.pending(), 0, "nothing restored");
  assert.deepEqual(server.eventIds(), ids, "each event sent once");
});

test("drop_oldest makes room for the newest", async () => {
  server.handler = (_req, res) => {
    res.writeHead(503, { "Retry-After": "60" }).end();
  };
  const e = events({ maxQueueSize: 2, onFull: "drop_oldest", flushIntervalMs: 10_000 });
  e.track("a");
  e.track("b");
  e.track("c");
  assert.equal(e.pending(), 2);
  assert.equal(e.stats.droppedQueueFull, 1);
});

test("identify goes to /v1/identify; queued events keep the ids they were tracked with", async () => {
  const e = events({ flushIntervalMs: 10_000 });
  e.track("before");
  e.identify("user-9", { plan: "pro" });
  e.track("after");
  await e.flush();
  await waitFor(() => e.stats.sent === 3, 3000);
  assert.deepEqual(
    server.seen.map((s) => s.path),
    ["/v1/batch", "/v1/identify", "/v1/batch"],
  );
  const identify = JSON.parse(server.seen[1].body);
  assert.equal(identify.type, "identify");
  assert.equal(identify.user_id, "user-9");
  assert.equal(identify.anonymous_id, e.anonymous);
  assert.equal(JSON.parse(server.seen[0].body).batch[0].user_id, undefined);
  assert.equal(JSON.parse(server.seen[2].body).batch[0].user_id, "user-9");
});

test("the session survives within the timeout and rotates after inactivity", () => {
  const storage = new MemoryStorage();
  const e = events({ syncStorage: storage, sessionTimeoutMs: 30 * 60 * 1000 });
  const t = Date.now();
  const s1 = e.sessionId(t);
  assert.equal(e.sessionId(t + 29 * 60 * 1000), s1);
  const reloaded = events({ syncStorage: storage });
  assert.equal(reloaded.sessionId(t + 30 * 60 * 1000), s1, "a reload keeps it");
  assert.notEqual(reloaded.sessionId(t + 61 * 60 * 1000), s1, "31 minutes idle rotate it");
});

test("reset starts a new anonymous id and forgets the user", () => {
  const e = events();
  const anon = e.anonymous;
  e.identify("u");
  e.reset();
  assert.notEqual(e.anonymous, anon);
  assert.equal(e.user, null);
});

test("properties must be flat and finite", () => {
  const e = events();
  assert.throws(() => e.track("a", { nested: { x: 1 } as unknown as string }));
  assert.throws(() => e.track("a", { n: Number.NaN }));
  assert.throws(() => e.track("$reserved"));
});
