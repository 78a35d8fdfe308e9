// Flags (ETag polling, SSE, bootstrap, last-known), entitlements (TTL cache, stale, fallback), onboarding
// (no step when down) and the OpenFeature web provider, against a real HTTP server on loopback.
import assert from "node:assert/strict";
import type { ServerResponse } from "node:http";
import { after, before, beforeEach, test } from "node:test";
import { OpenFeature } from "@openfeature/web-sdk";
import { Plg } from "../src/index.js";
import { PlgWebProvider } from "../src/openfeature.js";
import { MemoryStore } from "../src/storage.js";
import { KEY, MemoryStorage, type Seen, TestServer, waitFor } from "./helpers.js";

const DOC = {
  revision: 1,
  flags: [
    { key: "new_dashboard", rules: [{ users: ["u-1"], serve: { variant: "on" } }], default: { variant: "off" } },
    { key: "color", variants: { red: "red", blue: "blue" }, off_variant: "red", default: { variant: "blue" } },
    { key: "limit", variants: { low: 10, high: 100 }, off_variant: "low", default: { variant: "high" } },
  ],
};

let server: TestServer;
let doc: Record<string, unknown> = DOC;
let etag = '"v1"';
const streams: ServerResponse[] = [];

function growth(req: Seen, res: ServerResponse): void {
  if (req.path === "/v1/flags") {
    if (req.headers["if-none-match"] === etag) {
      res.writeHead(304, { ETag: etag }).end();
      return;
    }
    res.writeHead(200, { ETag: etag, "Content-Type": "application/json" }).end(JSON.stringify(doc));
    return;
  }
  if (req.path === "/v1/flags/stream") {
    res.writeHead(200, { "Content-Type": "text/event-stream" });
    res.write(`retry: 1000\n\nevent: flags\nid: 1\ndata: ${JSON.stringify(doc)}\n\n`);
    streams.push(res);
    return;
  }
  if (req.path.startsWith("/v1/entitlements/acme/")) {
    const feature = req.path.split("/").pop();
    if (feature === "unknown") {
      res.writeHead(404, { "Content-Type": "application/json" }).end('{"code":"unknown_feature","message":"no"}');
      return;
    }
    const allowed = feature !== "sso";
    res.writeHead(200, { "Content-Type": "application/json" }).end(
      JSON.stringify({
        customer_id: "acme",
        feature,
        allowed,
        plan: "free",
        usage: 5,
        limit: 10,
        remaining: 5,
        upgrade: allowed
          ? null
          : { code: "feature_not_in_plan", upgrade_url: "http://up/acme?feature=sso", suggested_plan: "pro" },
      }),
    );
    return;
  }
  if (req.path === "/v1/activation/acme/u-7/stream") {
    res.writeHead(200, { "Content-Type": "text/event-stream" });
    res.write(": activation stream\n\n");
    res.write(`event: show-upgrade-prompt\ndata: ${JSON.stringify({ customer_id: "acme", threshold: "projects" })}\n\n`);
    streams.push(res);
    return;
  }
  if (req.path.startsWith("/v1/onboarding/acme/")) {
    if (req.method === "POST") {
      res.writeHead(201, { "Content-Type": "application/json" }).end("{}");
      return;
    }
    res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify({ step: { id: "invite", title: "Invite" } }));
    return;
  }
  res.writeHead(404).end();
}

before(async () => {
  server = await new TestServer().start();
});
after(async () => {
  for (const s of streams) s.end();
  await server.stop();
});
beforeEach(() => {
  server.seen = [];
  server.handler = growth;
  doc = DOC;
  etag = '"v1"';
});

function client(extra: Record<string, unknown> = {}): Plg {
  return new Plg().init({
    apiKey: KEY,
    host: server.url,
    growthHost: server.url,
    entitlementsHost: server.url,
    customerId: "acme",
    flushIntervalMs: 60_000,
    store: new MemoryStore(),
    syncStorage: new MemoryStorage(),
    ...extra,
  });
}

test("flags over SSE: evaluated locally, a pushed change reaches onChange", async () => {
  const plg = client();
  await plg.flags.ready();
  assert.equal(plg.flags.isEnabled("new_dashboard"), false);
  assert.equal(plg.flags.variant("color"), "blue");
  const changed: string[][] = [];
  plg.flags.onChange((keys) => changed.push(keys));
  plg.identify("u-1");
  assert.equal(plg.flags.isEnabled("new_dashboard"), true, "identify changes the context");
  assert.deepEqual(changed.at(-1), ["new_dashboard"]);
  const next = { revision: 2, flags: [...DOC.flags.slice(0, 1), { ...DOC.flags[1], default: { variant: "red" } }, DOC.flags[2]] };
  for (const s of streams) s.write(`event: flags\nid: 2\ndata: ${JSON.stringify(next)}\n\n`);
  await waitFor(() => plg.flags.variant("color") === "red", 3000, "the pushed change");
  assert.ok(changed.some((c) => c.includes("color")));
  plg.close();
});

test("flags by ETag polling: a 304 keeps the definitions; a new ETag loads new ones", async () => {
  const plg = client({ flagsStream: false, flagsPollIntervalMs: 50 });
  await plg.flags.ready();
  await waitFor(() => server.seen.filter((s) => s.headers["if-none-match"] === '"v1"').length >= 2, 3000, "conditional polls");
  assert.equal(plg.flags.value("limit", 0), 100);
  doc = { revision: 2, flags: [{ ...DOC.flags[2], default: { variant: "low" } }] };
  etag = '"v2"';
  await waitFor(() => plg.flags.value("limit", 0) === 10, 3000, "the new document");
  plg.close();
});

test("bootstrap values answer before definitions arrive; last-known definitions answer offline", async () => {
  server.handler = (_req, res) => {
    res.socket?.destroy();
  };
  const boot = new Plg().init({
    apiKey: KEY,
    host: server.url,
    growthHost: server.url,
    flagsBootstrap: { new_dashboard: true },
    store: new MemoryStore(),
    syncStorage: new MemoryStorage(),
  });
  assert.equal(boot.flags.isEnabled("new_dashboard"), true);
  assert.equal(boot.flags.evaluate("new_dashboard", false).reason, "CACHED");
  boot.close();

  server.handler = growth;
  const store = new MemoryStore();
  const online = client({ store, flagsStream: false });
  await online.flags.ready();
  await new Promise((r) => setTimeout(r, 50)); // the definitions are saved asynchronously
  online.close();
  server.handler = (_req, res) => {
    res.socket?.destroy();
  };
  const offline = client({ store, flagsStream: false });
  await offline.flags.ready();
  assert.equal(offline.flags.variant("color"), "blue", "from the last-known definitions");
  offline.close();
});

test("entitlements: cached for the TTL, last-known when unreachable, fallback when never known", async () => {
  const plg = client({ entitlementsTtlMs: 100, entitlementsFallback: { exports: false } });
  const sso = await plg.entitlements.check("sso");
  assert.equal(sso.allowed, false);
  assert.equal(sso.source, "live");
  assert.deepEqual(sso.upgrade, { code: "feature_not_in_plan", upgrade_url: "http://up/acme?feature=sso", suggested_plan: "pro" });
  assert.equal((await plg.entitlements.check("sso")).source, "cache");
  assert.equal(server.seen.filter((s) => s.path.includes("/sso")).length, 1);
  await new Promise((r) => setTimeout(r, 120));
  server.handler = (_req, res) => {
    res.writeHead(503).end("{}");
  };
  const stale = await plg.entitlements.check("sso");
  assert.equal(stale.source, "stale");
  assert.equal(stale.allowed, false);
  assert.equal(plg.entitlements.peek("exports").allowed, false, "the configured fallback, at once");
  assert.equal((await plg.entitlements.check("exports")).source, "fallback");
  server.handler = growth;
  const unknown = await plg.entitlements.check("unknown");
  assert.equal(unknown.error?.code, "unknown_feature");
  plg.close();
});

test("onboarding: the next step, completion, and no step when the service is down", async () => {
  const plg = client();
  plg.identify("u-7");
  assert.deepEqual(await plg.onboarding.next(), { id: "invite", title: "Invite" });
  assert.equal(await plg.onboarding.complete("invite"), true);
  assert.ok(server.seen.some((s) => s.method === "POST" && s.path === "/v1/onboarding/acme/u-7/steps/invite/complete"));
  server.handler = (_req, res) => {
    res.socket?.destroy();
  };
  assert.equal(await plg.onboarding.next(), null);
  assert.equal(await plg.onboarding.complete("invite"), false);
  plg.close();
});

test("onActivation delivers the person's crossings from the SSE stream until unsubscribed", async () => {
  const plg = client();
  plg.identify("u-7");
  const got: unknown[] = [];
  const stop = plg.onboarding.onActivation((e) => got.push(e));
  await waitFor(() => got.length === 1, 3000, "the crossing");
  assert.deepEqual(got[0], { customer_id: "acme", threshold: "projects" });
  stop();
  plg.close();
});

test("the OpenFeature web provider answers through OpenFeature's client API", async () => {
  const plg = client();
  await OpenFeature.setContext({ targetingKey: "u-1" });
  await OpenFeature.setProviderAndWait(new PlgWebProvider(plg));
  const of = OpenFeature.getClient();
  assert.equal(of.getBooleanValue("new_dashboard", false), true, "targetingKey is the user id");
  const details = of.getStringDetails("color", "green");
  assert.equal(details.value, "blue");
  assert.equal(details.variant, "blue");
  assert.equal(of.getNumberValue("limit", 0), 100);
  const missing = of.getBooleanDetails("nope", true);
  assert.equal(missing.value, true);
  assert.equal(missing.errorCode, "FLAG_NOT_FOUND");
  assert.equal(of.getNumberDetails("color", 1).errorCode, "TYPE_MISMATCH");
  await OpenFeature.close();
  plg.close();
});
