// Per-flag local evaluation cost of the browser SDK's engine (Node, same code as the bundle): the shared
// vectors' document, every case's flag and context in a loop. `node bench/flags.mjs` after `npm run build`.
import { readFileSync } from "node:fs";
import { compileDocument } from "../dist/plg.js";

const vectors = JSON.parse(readFileSync(new URL("../../testdata/flag_evaluations.json", import.meta.url)));
const set = compileDocument(vectors.document);
const cases = vectors.cases;
const rounds = Number(process.argv[2] ?? 2000);
const run = (label, pick) => {
  for (let i = 0; i < 200; i++) for (const c of cases) set.evaluate(c.flag, pick(c, i)); // warm-up
  // Contexts built outside the timed loop, as in sdk/bench_flags.py.
  const batches = Array.from({ length: rounds }, (_, r) => cases.map((c) => [c.flag, pick(c, r)]));
  const started = process.hrtime.bigint();
  for (const batch of batches) for (const [key, ctx] of batch) set.evaluate(key, ctx);
  const ns = Number(process.hrtime.bigint() - started) / (rounds * cases.length);
  console.log(`${label}: ${(ns / 1000).toFixed(3)} µs per evaluation (${rounds * cases.length} evaluations)`);
};
run("js, same contexts (buckets cached)", (c) => c.context);
// A new user id per round of the 207 cases: each bucketed flag hashes (murmur3) once per round.
run("js, a new user per round (hashing)", (c, r) => ({ ...c.context, user_id: `u-${r}` }));
