// Builds dist/ with esbuild (bundles) and tsc (type declarations); `--tests` also bundles test/*.test.ts
// into .test-build/ for Node's own test runner. One script so `npm run build` and `npm test` agree.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { readdirSync, rmSync } from "node:fs";

const common = { bundle: true, target: ["es2020"], logLevel: "warning", legalComments: "none" };
const started = Date.now();

if (!process.argv.includes("--tests")) {
  rmSync("dist", { recursive: true, force: true });
  await Promise.all([
    // The ES module: idb-keyval is bundled (600 bytes) so the file works from a CDN as it is.
    build({ ...common, entryPoints: ["src/index.ts"], format: "esm", outfile: "dist/plg.js", sourcemap: true }),
    // The script tag: defines window.plg; minified, the size docs/sdk.md quotes.
    build({ ...common, entryPoints: ["src/iife.ts"], format: "iife", outfile: "dist/plg.iife.js", minify: true, sourcemap: true }),
    // OpenFeature stays the app's own dependency (a peer): not bundled.
    build({
      ...common,
      entryPoints: ["src/openfeature.ts"],
      format: "esm",
      outfile: "dist/openfeature.js",
      external: ["@openfeature/web-sdk", "./index.js"],
      sourcemap: true,
    }),
  ]);
  execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.json"], { stdio: "inherit" });
  console.log(`built dist/ in ${Date.now() - started} ms`);
} else {
  rmSync(".test-build", { recursive: true, force: true });
  const tests = readdirSync("test").filter((f) => f.endsWith(".test.ts"));
  await build({
    ...common,
    entryPoints: tests.map((f) => `test/${f}`),
    format: "esm",
    platform: "node",
    target: ["node20"],
    outdir: ".test-build",
    outExtension: { ".js": ".mjs" },
    external: ["@openfeature/*"],
  });
  console.log(`built ${tests.length} test files in ${Date.now() - started} ms`);
}
