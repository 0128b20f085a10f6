// Drives a capsa site in headless Chromium as a user would, for the tests:
// node drive.mjs SCENARIO.json, printing one JSON line with what the page
// showed. A scenario is {url, consent: "allow"|"deny"|null, env: {NAME:
// value}, files: {dir: [[name, text]]}, lines: [REPL lines], eof, timeoutMs}.
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";

const sc = JSON.parse(readFileSync(process.argv[2], "utf8"));
const timeout = sc.timeoutMs || 60000;
const browser = await chromium.launch({
  executablePath: process.env.CAPSA_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const result = { console: [], requests: [] };
try {
  const page = await browser.newPage();
  page.on("console", (m) => result.console.push(m.text()));
  page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
  page.on("request", (r) => result.requests.push(r.url()));
  page.on("worker", (w) => w.on("console", (m) => result.console.push(`worker: ${m.text()}`)));
  const state = () => page.evaluate(() => document.body.dataset.state);
  const until = (states) => page.waitForFunction((s) => s.includes(document.body.dataset.state), states, { timeout });
  const started = Date.now();
  await page.goto(sc.url);
  result.digest = await page.textContent("#digest");
  await until(["consent", "input", "exited", "failed", "declined"]);
  if ((await state()) === "consent") {
    result.asks = await page.textContent("#asks");
    for (const [name, value] of Object.entries(sc.env || {})) await page.fill(`input[name="env-${name}"]`, value);
    for (const [dir, files] of Object.entries(sc.files || {})) {
      await page.setInputFiles(`input[name="dir-${dir}"]`, files.map(([name, text]) => ({ name, mimeType: "application/octet-stream", buffer: Buffer.from(text) })));
    }
    await page.click(sc.consent === "deny" ? "#deny" : "#allow");
    await until(["input", "exited", "failed", "declined"]);
  }
  result.firstInputMs = Date.now() - started;
  result.firstStateMs = result.firstInputMs;
  for (const line of sc.lines || []) {
    if ((await state()) !== "input") break;
    await page.fill("#stdin", line);
    await page.press("#stdin", "Enter");
    await until(["input", "exited", "failed"]);
  }
  if (sc.eof && (await state()) === "input") {
    await page.click("#eof");
    await until(["exited", "failed"]);
  }
  result.finalMs = Date.now() - started;
  if (sc.screenshot) await page.screenshot({ path: sc.screenshot, fullPage: true });
  result.state = await state();
  result.output = await page.textContent("#output");
  result.spans = await page.$$eval("#output span", (s) => s.map((e) => [e.className, e.textContent]));
  result.elementsInOutput = await page.$$eval("#output *", (s) => s.filter((e) => e.tagName !== "SPAN").length);
  result.status = await page.textContent("#status");
  result.exitCode = await page.evaluate(() => document.body.dataset.exitCode ?? null);
  result.files = await page.textContent("#files");
  // The whole output, when the page offered it for download.
  result.wholeOutput = await page.evaluate(async () => {
    const link = [...document.querySelectorAll("#files a")].find((a) => a.download === "output.txt");
    return link ? await (await fetch(link.href)).text() : null;
  });
} catch (e) {
  result.error = String(e);
  try {
    result.state = await browser.contexts()[0].pages()[0].evaluate(() => document.body.dataset.state);
    result.output = await browser.contexts()[0].pages()[0].textContent("#output");
  } catch {}
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
