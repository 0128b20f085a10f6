// Bundles the page's host into dist/ (or the directory given): worker.js
// (the WASI host, preview2-shim included) and page.js (the page's UI).
// capsa embeds both; its build script runs this.
import { build } from "esbuild";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] || join(here, "dist");
mkdirSync(out, { recursive: true });
for (const name of ["worker", "page"]) {
  await build({
    entryPoints: [join(here, "src", `${name}.js`)],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    minify: true,
    legalComments: "eof",
    outfile: join(out, `${name}.js`),
    logLevel: "warning",
  });
}
