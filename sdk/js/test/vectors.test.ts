// The shared cross-language vectors (sdk/testdata): the browser SDK buckets and evaluates exactly like the
// Python SDK and the growth service.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { bucket, compileDocument, murmur3, ROLLOUT_SEED, VARIANT_SEED } from "../src/engine-exports.js";

const testdata = new URL("../../testdata/", import.meta.url);
const buckets = JSON.parse(readFileSync(new URL("flag_buckets.json", testdata), "utf8"));
const evaluations = JSON.parse(readFileSync(new URL("flag_evaluations.json", testdata), "utf8"));

const fromHex = (hex: string) => Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));

test("murmur3 matches every vector", () => {
  assert.ok(buckets.murmur3_x86_32.length >= 30);
  for (const v of buckets.murmur3_x86_32) assert.equal(murmur3(fromHex(v.hex), v.seed), v.hash, `${v.hex}/${v.seed}`);
});

test("rollout and variant buckets match every vector", () => {
  assert.equal(buckets.rollout_seed, ROLLOUT_SEED);
  assert.equal(buckets.variant_seed, VARIANT_SEED);
  for (const v of buckets.buckets_of_keys) {
    assert.equal(bucket(v.salt, v.value, ROLLOUT_SEED), v.rollout_bucket, v.key);
    assert.equal(bucket(v.salt, v.value, VARIANT_SEED), v.variant_bucket, v.key);
  }
});

test("every evaluation case gives the same variant, value and reason", () => {
  const set = compileDocument(evaluations.document);
  assert.ok(evaluations.cases.length >= 200);
  for (const c of evaluations.cases) {
    const answer = set.evaluate(c.flag, c.context);
    const where = `${c.flag} ${JSON.stringify(c.context)}`;
    assert.equal(answer.variant, c.variant, where);
    assert.deepEqual(answer.value, c.value, where);
    assert.equal(answer.reason, c.reason, where);
  }
});

test("an unknown flag answers the default with FLAG_NOT_FOUND, a wrong type with TYPE_MISMATCH", () => {
  const set = compileDocument(evaluations.document);
  assert.deepEqual(
    [set.evaluate("nope", {}, "d").value, set.evaluate("nope", {}, "d").errorCode],
    ["d", "FLAG_NOT_FOUND"],
  );
  const typed = set.evaluate("abc", { user_id: "u" }, 7, "number");
  assert.equal(typed.errorCode, "TYPE_MISMATCH");
  assert.equal(typed.value, 7);
});
