// Schema versions (issue 20, seed 001 "enforce schema_version on every event"): with the generated
// TRACKING_PLAN every event the plan lists leaves the SDK with its version in the plan's version property,
// through plg.track, the typed trackEvent, page() and identify(); an event the plan does not list, or one
// whose caller set a version, is left as it is. Against a real HTTP server on loopback.
import assert from "node:assert/strict";
import { after, afterEach, before, beforeEach, test } from "node:test";
import { TRACKING_PLAN, trackEvent } from "../examples/plg-events.js";
import { Plg } from "../src/index.js";
import { MemoryStore } from "../src/storage.js";
import { accept, KEY, MemoryStorage, TestServer, waitFor } from "./helpers.js";

let server: TestServer;
const opened: Plg[] = [];
before(async () => {
  server = await new TestServer().start();
});
after(async () => {
  await server.stop();
});
afterEach(() => {
  for (const p of opened.splice(0)) p.close();
});
beforeEach(() => {
  server.seen = [];
  server.handler = accept;
});

function client(withPlan: boolean): Plg {
  const p = new Plg().init({
    apiKey: KEY,
    host: server.url,
    flushIntervalMs: 20,
    store: new MemoryStore(),
    syncStorage: new MemoryStorage(),
    ...(withPlan ? { plan: TRACKING_PLAN } : {}),
  });
  opened.push(p);
  return p;
}

interface Sent {
  name?: string;
  type?: string;
  properties?: Record<string, unknown>;
}

function sent(): Sent[] {
  const out: Sent[] = [];
  for (const s of server.seen) {
    if (s.path === "/v1/batch") out.push(...(JSON.parse(s.body).batch as Sent[]));
    if (s.path === "/v1/identify") out.push(JSON.parse(s.body) as Sent);
  }
  return out;
}

test("with the plan, every planned event carries its version; unplanned ones and explicit versions are left alone", async () => {
  const p = client(true);
  p.track("api_call_made", { endpoint: "/v1/search", status: 200 });
  p.track("project_created", { project_type: "app" });
  p.track("api_call_made", { path: "/old", schema_version: 1 }); // an app still on version 1 says so
  p.track("not_in_the_plan", { a: 1 });
  p.track("constructor"); // not Object.prototype's member
  trackEvent(p, "team_invite_sent", { role: "member", invitee_domain: "example.com" });
  p.page({ path: "/pricing" });
  await waitFor(() => p.pending() === 0 && sent().length === 7, 15_000, "7 events sent");
  p.identify("user-1", { plan: "pro" });
  await waitFor(() => p.pending() === 0 && sent().length === 8, 15_000, "identify sent");
  const got = sent();
  const version = (i: number) => got[i].properties?.schema_version;
  assert.equal(TRACKING_PLAN.versionProperty, "schema_version");
  assert.equal(version(0), 2);
  assert.equal(version(1), 1);
  assert.equal(version(2), 1);
  assert.equal(got[2].properties?.path, "/old");
  assert.equal(version(3), undefined);
  assert.equal(version(4), undefined);
  assert.equal(version(5), TRACKING_PLAN.events.team_invite_sent);
  assert.equal(got[6].name, "page_viewed");
  assert.equal(version(6), TRACKING_PLAN.events.page_viewed);
  assert.equal(got[7].type, "identify");
  assert.deepEqual(got[7].properties, { plan: "pro", schema_version: TRACKING_PLAN.events.$identify });
});

test("the typed trackEvent stamps the version even on a client initialised without the plan", async () => {
  const p = client(false);
  trackEvent(p, "api_call_made", { endpoint: "/v1/x" });
  p.track("api_call_made", { endpoint: "/v1/y" });
  await waitFor(() => p.pending() === 0 && sent().length === 2, 15_000, "2 events sent");
  const [typed, untyped] = sent();
  assert.equal(typed.properties?.schema_version, 2);
  assert.equal(untyped.properties?.schema_version, undefined, "no plan given: nothing is made up");
});
