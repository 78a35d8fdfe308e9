// The typed-events example: `plg plan codegen --lang ts --out sdk/js/examples` wrote plg-events.ts from the
// tracking plan; with it, a wrong event name, a missing required property or a value outside an enum does
// not compile. tests/unit/sdk/test_plan_codegen.py compiles this file with `tsc --strict` (and a broken
// copy, which must fail), and checks plg-events.ts is what the plan generates today.
import { plg } from "@plg/sdk";
import { trackEvent, type PlgEvents } from "./plg-events.js";

plg.init({ apiKey: "plgpk_example_0123456789abcdefghijklmnopqrstuvwxyz", host: "https://ingest.example.com" });

trackEvent(plg, "project_created", { project_type: "app" });
trackEvent(plg, "team_invite_sent", { role: "member", invitee_domain: "example.com" });
trackEvent(plg, "api_call_made", { endpoint: "/v1/search", status: 200, latency_ms: 12.5 });
trackEvent(plg, "page_viewed", { path: "/pricing", campaign: "spring" }); // additional properties allowed

const signup: PlgEvents["signup_completed"] = { plan: "pro", source: "ads" };
trackEvent(plg, "signup_completed", signup);
