// Bundles the real tracking SDKs (installed by `npm ci` from package-lock.json) into one
// script each under dist/, which tests/test_trackers_browser.py serves to headless Chromium
// from a local page: no CDN at test time. Run by `make sdks`, or by the tests themselves.
import { build } from "esbuild";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const names = ["segment", "rudderstack", "snowplow"];
mkdirSync(join(here, "dist"), { recursive: true });
await build({
  entryPoints: names.map((name) => join(here, "src", `${name}.js`)),
  outdir: join(here, "dist"),
  bundle: true,
  format: "iife",
  platform: "browser",
  target: "chrome110",
  define: { "process.env.NODE_ENV": '"production"' },
  legalComments: "none",
  logLevel: "warning",
});
writeFileSync(join(here, "dist", "BUILT"), names.map((name) => `${name}.js`).join("\n") + "\n");
console.log(`bundled ${names.join(", ")} into ${join(here, "dist")}`);
