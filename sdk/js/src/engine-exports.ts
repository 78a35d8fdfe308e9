// What the tests and the benchmark import from the engine (kept out of the public index's surface).
export { bucket, compileDocument, FlagSet, ROLLOUT_SEED, splitBounds, VARIANT_SEED } from "./engine.js";
export { murmur3, murmur3String } from "./murmur3.js";
