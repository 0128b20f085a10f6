// The page's network decisions against the case table the policy crate is
// tested against too (crates/web/tests/net_cases.rs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { decide, parseRule } from "../src/rules.js";
import { escapeText, denialText } from "../src/text.js";

const table = JSON.parse(readFileSync(new URL("./net-cases.json", import.meta.url), "utf8"));

test("every case of the table", () => {
  for (const c of table.cases) {
    const rules = c.rules.map(parseRule);
    const v = decide(rules, c.host, c.port);
    assert.equal(v.allowed, c.page, `${JSON.stringify(c.rules)} ${c.host}:${c.port}`);
    if (!v.allowed) assert.match(v.hint, /^--allow-net=/);
  }
});

test("rules that are not rules are refused", () => {
  for (const bad of ["", "a b", "exa mple.com", "host:0", "host:65536", "host:x", "[::1", "1.2.3.4/33", "-bad.com", "*.", "a..b"]) {
    assert.throws(() => parseRule(bad), /invalid network rule/, bad);
  }
});

test("a denial line escapes what the guest chose", () => {
  const t = denialText("GET", "http://x/\u001b[2J\u202e", "x is not granted", "--allow-net=x:80");
  assert.ok(!/[\u0000-\u001f\u202e]/.test(t.replace("\n  hint", "")), t);
  assert.equal(escapeText("a\nb"), "a\\u{a}b");
  assert.ok(denialText("GET", "y".repeat(600), "r", "h").includes("..."));
  assert.ok(!denialText("GET", "y".repeat(600), "r", "h").includes("hint"));
  const huge = "a".repeat(1 << 20);
  assert.ok(denialText("GET", `http://${huge}:80/`, `${huge} is not granted`, `--allow-net=${huge}:80`).length < 1200);
});
