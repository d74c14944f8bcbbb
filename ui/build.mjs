// Builds api/static/vendor/ from the pinned packages of package-lock.json (`make ui-assets`).
// The outputs are committed, so running the server never needs Node.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "api", "static", "vendor");
mkdirSync(out, { recursive: true });

const copies = {
  "htmx.org/dist/htmx.min.js": "htmx.min.js",
  "uplot/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
  "uplot/dist/uPlot.min.css": "uPlot.min.css",
};
for (const [from, to] of Object.entries(copies)) {
  copyFileSync(join(here, "node_modules", from), join(out, to));
}

await build({
  entryPoints: [join(here, "src", "codemirror.js")],
  bundle: true,
  minify: true,
  format: "iife",
  globalName: "TiercelCodeMirror",
  target: ["es2020"],
  legalComments: "none",
  outfile: join(out, "codemirror.min.js"),
});

// What was built from which version, so a reviewer sees an upgrade in the diff.
const lock = JSON.parse(readFileSync(join(here, "package-lock.json"), "utf8"));
const versions = Object.entries(lock.packages)
  .filter(([path]) => path.startsWith("node_modules/") && !lock.packages[path].dev)
  .map(([path, info]) => `${path.slice("node_modules/".length)} ${info.version}`)
  .sort();
writeFileSync(join(out, "VERSIONS.txt"), versions.join("\n") + "\n");
console.log(`api/static/vendor/: ${Object.keys(copies).length + 1} files built`);
