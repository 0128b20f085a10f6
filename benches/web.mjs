#!/usr/bin/env node
// Time to first output of a Python script in a browser page: a site written
// by `capsa pack --web` against Pyodide (npm package `pyodide`) running the
// same script, both served by one static server on loopback and opened in
// Debian's headless Chromium, interleaved, cold (a fresh browser profile)
// and warm (the second load in that profile). Prints medians, the ratio
// capsa / Pyodide, and what each page downloads (bytes, and gzip -6).
//
//   node benches/web.mjs [--capsa BIN] [--runs N]
//
// BIN defaults to the release build in $CARGO_TARGET_DIR (or ./target),
// built first if missing. The peers come from benches/web/package.json's
// lock file (npm ci).
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, mkdirSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const runs = Number(opt("--runs", "7"));
const target = process.env.CARGO_TARGET_DIR || join(root, "target");
let capsa = opt("--capsa", join(target, "release", "capsa"));
if (!opt("--capsa") && !existsSync(capsa)) {
  execFileSync("cargo", ["build", "--release", "-p", "capsa"], { cwd: root, stdio: "inherit" });
}
capsa = resolve(capsa);

const benchDir = join(root, "benches", "web");
execFileSync("npm", ["ci", "--no-audit", "--no-fund", "--silent"], { cwd: benchDir, stdio: "inherit" });
const { chromium } = await import(join(benchDir, "node_modules", "playwright-core", "index.mjs"));

const work = mkdtempSync(join(tmpdir(), "capsa-web-bench-"));
const SCRIPT = 'import json, sys\nprint("hello from python", json.dumps({"v": sys.version_info[:2]}))\n';
mkdirSync(join(work, "project"));
writeFileSync(join(work, "project", "main.py"), SCRIPT);
execFileSync(capsa, ["pack", "--web", join(work, "project"), "-o", join(work, "capsa")], { stdio: ["ignore", "ignore", "inherit"] });
execFileSync(capsa, ["pack", "--web", "--single-file", join(work, "project"), "-o", join(work, "capsa-one.html")], { stdio: ["ignore", "ignore", "inherit"] });
symlinkSync(join(benchDir, "node_modules", "pyodide"), join(work, "pyodide-dist"));
mkdirSync(join(work, "pyodide"));
writeFileSync(join(work, "pyodide", "index.html"), `<!doctype html><meta charset="utf-8"><pre id="output"></pre>
<script type="module">
import { loadPyodide } from "/pyodide-dist/pyodide.mjs";
const out = document.getElementById("output");
const py = await loadPyodide({ indexURL: "/pyodide-dist/", stdout: (s) => { out.textContent += s + "\\n"; } });
py.runPython(await (await fetch("/project/main.py")).text());
</script>`);

const server = spawn("python3", ["-u", "-m", "http.server", "--bind", "127.0.0.1", "0", "--directory", work], { stdio: ["ignore", "pipe", "ignore"] });
const port = await new Promise((ok, fail) => {
  server.stdout.once("data", (d) => {
    const m = /port (\d+)/.exec(String(d));
    m ? ok(Number(m[1])) : fail(new Error(`http.server said ${d}`));
  });
});

const peers = {
  capsa: `http://127.0.0.1:${port}/capsa/index.html`,
  "capsa (one file)": `http://127.0.0.1:${port}/capsa-one.html`,
  pyodide: `http://127.0.0.1:${port}/pyodide/index.html`,
};
const times = Object.fromEntries(Object.keys(peers).map((p) => [p, { cold: [], warm: [] }]));
const fetched = {};
const flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

async function firstOutput(page, url) {
  const t0 = performance.now();
  await page.goto(url);
  await page.waitForFunction(() => (document.getElementById("output")?.textContent || "").includes("hello from python"), null, { timeout: 60000 });
  return performance.now() - t0;
}

try {
  for (let i = 0; i < runs; i++) {
    const order = Object.keys(peers);
    if (i % 2) order.reverse();
    for (const peer of order) {
      const profile = mkdtempSync(join(tmpdir(), "capsa-web-profile-"));
      const ctx = await chromium.launchPersistentContext(profile, { executablePath: "/usr/bin/chromium", headless: true, args: flags });
      const page = ctx.pages()[0] || (await ctx.newPage());
      const urls = new Set();
      page.on("request", (r) => urls.add(r.url()));
      times[peer].cold.push(await firstOutput(page, peers[peer]));
      times[peer].warm.push(await firstOutput(page, peers[peer]));
      fetched[peer] = [...urls].filter((u) => u.startsWith("http://127.0.0.1")).map((u) => decodeURIComponent(new URL(u).pathname));
      await ctx.close();
      rmSync(profile, { recursive: true, force: true });
    }
  }
} finally {
  server.kill();
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const size = (peer) => {
  let raw = 0, gz = 0;
  for (const path of new Set(fetched[peer])) {
    const file = join(work, path);
    if (!existsSync(file) || statSync(file).isDirectory()) continue;
    const data = readFileSync(file);
    raw += data.length;
    gz += gzipSync(data, { level: 6 }).length;
  }
  return { raw, gz };
};
const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;
const version = execFileSync("/usr/bin/chromium", ["--version"]).toString().trim();
console.log(`${version}; ${runs} runs each, interleaved; time from navigation to "hello from python" on the page\n`);
console.log("| page | cold (fresh profile) | warm (second load) | downloads | gzip -6 |");
console.log("| --- | --- | --- | --- | --- |");
const py = times.pyodide;
for (const peer of Object.keys(peers)) {
  const t = times[peer];
  const { raw, gz } = size(peer);
  const ratio = (a, b) => (peer === "pyodide" ? "" : ` (${(a / b).toFixed(2)})`);
  console.log(`| ${peer} | ${median(t.cold).toFixed(0)} ms${ratio(median(t.cold), median(py.cold))} | ${median(t.warm).toFixed(0)} ms${ratio(median(t.warm), median(py.warm))} | ${mb(raw)} | ${mb(gz)} |`);
}
console.log("\n(ratio: capsa / Pyodide; lower is faster)");
rmSync(work, { recursive: true, force: true });
