// The page around a bundle: shows what the bundle asks for and lets the
// user allow it (typing in the variables it asks for, choosing files for the
// folders it asks for), runs it in a Web Worker, shows its output as text,
// then gives a Python bundle's REPL a line to type into. Nothing the guest
// writes is ever parsed as HTML.
import { escapeText } from "./text.js";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
};

const site = JSON.parse($("#capsa-site").textContent);
const state = (s) => {
  document.body.dataset.state = s;
};

/** Where each file of the site is: beside the page, or inside it (--single-file). */
async function assetUrls() {
  const packed = $("#capsa-files");
  const urls = {};
  if (!packed) {
    for (const name of site.files) urls[name] = new URL(name, location.href).href;
    return urls;
  }
  const files = JSON.parse(packed.textContent);
  for (const [name, b64] of Object.entries(files)) {
    // The browser's own base64 decoder (a data: URL), not a loop in JS.
    const bin = new Uint8Array(await (await fetch(`data:application/octet-stream;base64,${b64}`)).arrayBuffer());
    // The archives (.bin) are gzip already, and stay so: the worker unpacks them.
    const bytes = name.endsWith(".bin")
      ? bin
      : await new Response(new Blob([bin]).stream().pipeThrough(new DecompressionStream("gzip"))).arrayBuffer();
    const type = name.endsWith(".js") ? "text/javascript" : name.endsWith(".wasm") ? "application/wasm" : "application/octet-stream";
    urls[name] = URL.createObjectURL(new Blob([bytes], { type }));
  }
  return urls;
}

// Output is queued and drawn at most every 100 ms, in text nodes of at most
// 64 KiB, and the page keeps only the last 256 KiB of it on screen (all of
// it stays downloadable): a program that writes without end must not take
// the page's main thread, where the time limit and Stop live.
const out = $("#output");
const DRAW_MS = 100;
const BLOCK = 64 << 10;
const KEEP = 256 << 10;
// Runs of one stream each become a span: at most this many are drawn at a
// time and kept (alternating one-byte writes to stdout and stderr would
// otherwise make a node per byte).
const MAX_SPANS = 2000;
const queue = [];
const whole = [];
let wholeTail = "";
let shown = 0;
let dropped = 0;
let drawTimer = null;
let lastOut = null;
let onDraw = () => {};
// Combining marks in a row past this many are shown as a count: a letter
// with thousands of accents is one cluster whose layout cost grows with the
// square of its length (200,000 of them froze a page for 42 s).
const MAX_MARKS = 32;
const MARK = /\p{M}/u;
let marksCarry = 0;

function tame(text) {
  const shown = text.replace(/\p{M}+/gu, (m, offset) => {
    const before = offset === 0 ? marksCarry : 0;
    const total = before + m.length;
    if (total <= MAX_MARKS) return m;
    const keep = Math.max(0, MAX_MARKS - before);
    return `${m.slice(0, keep)}\u2026[${m.length - keep} combining marks]`;
  });
  // Marks at the end carry over to the next write. Counted backwards: an
  // anchored pattern (/\p{M}+$/) backtracks quadratically over a long run
  // that a newline follows.
  let i = text.length;
  while (i > 0 && MARK.test(text[i - 1])) i--;
  const trailing = text.length - i;
  marksCarry = trailing === text.length ? marksCarry + trailing : trailing;
  return shown;
}

function show(stream, text) {
  queue.push([stream, text]);
  wholeTail += text;
  if (wholeTail.length > BLOCK) {
    whole.push(wholeTail);
    wholeTail = "";
  }
  if (!drawTimer) drawTimer = setTimeout(draw, DRAW_MS);
}

function draw() {
  drawTimer = null;
  let runs = queue.splice(0);
  if (runs.length > MAX_SPANS) {
    for (const [, text] of runs.slice(0, runs.length - MAX_SPANS)) dropped += text.length;
    runs = runs.slice(-MAX_SPANS);
  }
  const pieces = [];
  for (const [stream, raw] of runs) {
    // In pieces of at most a block, so the view can keep a large write's end.
    const text = tame(raw);
    for (let i = 0; i < text.length; i += BLOCK) pieces.push([stream, text.slice(i, i + BLOCK)]);
  }
  for (const [stream, text] of pieces) {
    const node = lastOut && lastOut.dataset.stream === stream ? lastOut.lastChild : null;
    if (node && node.length + text.length <= BLOCK) {
      node.appendData(text);
    } else if (lastOut && lastOut.dataset.stream === stream) {
      lastOut.append(document.createTextNode(text));
    } else {
      lastOut = el("span", { class: stream, "data-stream": stream }, document.createTextNode(text));
      out.append(lastOut);
    }
    shown += text.length;
  }
  const note = $("#dropped");
  if (note) note.remove();
  // The oldest goes first: whole spans, or a span's first text node.
  while ((shown > KEEP || out.childNodes.length > MAX_SPANS) && out.firstChild) {
    const span = out.firstChild;
    const first = span.firstChild;
    if (span !== lastOut && (span.childNodes.length <= 1 || out.childNodes.length > MAX_SPANS)) {
      const n = span.textContent.length;
      span.remove();
      shown -= n;
      dropped += n;
    } else if (span.childNodes.length > 1) {
      shown -= first.length;
      dropped += first.length;
      first.remove();
    } else {
      break;
    }
  }
  if (dropped) {
    $("#whole").hidden = false;
    const n = note || el("span", { id: "dropped", class: "note" });
    n.textContent = `[${dropped} earlier characters are not shown here; the whole output is offered for download at the end]\n`;
    out.prepend(n);
  }
  out.scrollTop = out.scrollHeight;
  onDraw();
}

/** Draws what is queued now (before the page reads or ends). */
function drawNow() {
  clearTimeout(drawTimer);
  draw();
}

function consent() {
  const ask = site.ask;
  const box = $("#asks");
  const inputs = { env: {}, dirs: {} };
  if (!ask.net.length && !ask.env.length && !ask.dirs.length) return Promise.resolve({ env: {}, dirs: {} });
  state("consent");
  box.hidden = false;
  const list = el("ul");
  for (const n of ask.net) {
    list.append(el("li", {}, el("b", {}, "network "), el("code", {}, escapeText(n.rule)), ` ${escapeText(n.reason || "")}`));
  }
  for (const e of ask.env) {
    const input = el("input", { type: "text", name: `env-${e.name}`, autocomplete: "off" });
    inputs.env[e.name] = input;
    list.append(el("li", {}, el("b", {}, "variable "), el("code", {}, escapeText(e.name)), ` ${escapeText(e.reason || "")} `, input));
  }
  for (const d of ask.dirs) {
    const input = el("input", { type: "file", multiple: "", name: `dir-${d.name}` });
    inputs.dirs[d.name] = input;
    list.append(el("li", {}, el("b", {}, d.access === "read-write" ? "folder (read and write) " : "folder (read) "),
      el("code", {}, escapeText(d.guest)), ` ${escapeText(d.reason || "")} `, input));
  }
  box.append(el("p", {}, "This program asks for:"), list);
  const allow = el("button", { id: "allow" }, "Allow and run");
  const deny = el("button", { id: "deny" }, "Do not run");
  box.append(allow, " ", deny);
  return new Promise((resolve) => {
    deny.onclick = () => {
      box.hidden = true;
      show("stderr", "capsa: not run: the permissions were not given\n");
      drawNow();
      state("declined");
    };
    allow.onclick = async () => {
      const env = {};
      for (const [name, input] of Object.entries(inputs.env)) env[name] = input.value;
      const dirs = {};
      for (const [name, input] of Object.entries(inputs.dirs)) {
        const files = [];
        for (const f of input.files) files.push([f.name, new Uint8Array(await f.arrayBuffer())]);
        dirs[name] = files;
      }
      box.hidden = true;
      resolve({ env, dirs });
    };
  });
}

function wholeBytes() {
  return new TextEncoder().encode(whole.join("") + wholeTail);
}

/** The whole output, when the page had to drop some of it from view. */
function offerWhole() {
  if (dropped) downloads("The whole output:", [["output.txt", wholeBytes()]]);
}

function downloads(title, files) {
  if (!files.length) return;
  const list = el("ul");
  for (const [path, bytes] of files) {
    const a = el("a", { href: URL.createObjectURL(new Blob([bytes])), download: path.split("/").pop() }, escapeText(path));
    list.append(el("li", {}, a));
  }
  $("#files").append(el("p", {}, title), list);
}

async function main() {
  $("#title").textContent = escapeText(site.name);
  $("#digest").textContent = `bundle sha256 ${site.digest}`;
  if (typeof WebAssembly.Suspending !== "function") {
    show("stderr", "capsa: this browser cannot run the program: it needs WebAssembly JavaScript Promise Integration (Chrome or Edge 137 or later)\n");
    drawNow();
    state("failed");
    return;
  }
  const given = await consent();
  state("loading");
  const urls = await assetUrls();
  const assets = { component: urls[site.component], core: {}, app: urls["app.bin"], stdlib: urls["stdlib.bin"] };
  for (const name of site.core) assets.core[name] = urls[name];
  const worker = new Worker(urls["worker.js"], { type: "module" });
  // The time limit counts while the program computes, not while it waits
  // for the user to type: it ends the Worker, and the page stays.
  let timer = null;
  let deadline = Infinity;
  let ended = false;
  const end = (text, code) => {
    if (ended) return;
    ended = true;
    clearTimeout(timer);
    $("#stop").disabled = true;
    worker.terminate();
    form.hidden = true;
    show("stderr", `capsa: ${text}\n`);
    drawNow();
    offerWhole();
    $("#status").textContent = `ended: ${text}`;
    document.body.dataset.exitCode = String(code);
    state("exited");
  };
  const startClock = () => {
    clearTimeout(timer);
    deadline = performance.now() + site.limits.timeout_ms;
    timer = setTimeout(() => end(site.limits.timeout_text, 124), site.limits.timeout_ms);
  };
  onDraw = () => {
    if (performance.now() > deadline) end(site.limits.timeout_text, 124);
  };
  const stopClock = () => {
    clearTimeout(timer);
    deadline = Infinity;
  };
  const line = $("#stdin");
  const form = $("#repl");
  const send = (text) => worker.postMessage({ type: "stdin", text });
  form.onsubmit = (e) => {
    e.preventDefault();
    show("stdin", line.value + "\n");
    send(line.value + "\n");
    line.value = "";
    form.hidden = true;
    startClock();
    state("running");
  };
  line.onkeydown = (e) => {
    if (e.key === "d" && e.ctrlKey) {
      e.preventDefault();
      worker.postMessage({ type: "eof" });
      form.hidden = true;
      startClock();
    }
  };
  $("#eof").onclick = () => {
    worker.postMessage({ type: "eof" });
    form.hidden = true;
    startClock();
  };
  $("#stop").onclick = () => end("stopped by the user", 130);
  // While it runs, what is out of view so far.
  $("#whole").onclick = () => {
    const a = el("a", { href: URL.createObjectURL(new Blob([wholeBytes()])), download: "output.txt" });
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  };
  worker.onmessage = (e) => {
    const m = e.data;
    // Also here (after the message: what came in time is shown), in case
    // messages kept the timer from firing.
    queueMicrotask(() => {
      if (performance.now() > deadline) end(site.limits.timeout_text, 124);
    });
    if (m.type === "out") for (const [stream, text] of m.runs) show(stream, text);
    else if (m.type === "ready") state("running");
    else if (m.type === "output-limit") end(site.limits.output_text, 137);
    else if (m.type === "stdin-wait") {
      stopClock();
      form.hidden = false;
      line.focus();
      drawNow();
      state("input");
    } else if (m.type === "exit") {
      stopClock();
      $("#stop").disabled = true;
      form.hidden = true;
      drawNow();
      offerWhole();
      $("#status").textContent = `exited with code ${m.code}`;
      document.body.dataset.exitCode = String(m.code);
      for (const [name, files] of Object.entries(m.dirs)) downloads(`Files in ${name}:`, files);
      downloads("Files written in the working directory:", m.scratch);
      state("exited");
    } else if (m.type === "fail") {
      stopClock();
      show("stderr", `capsa: the program could not run: ${m.text}\n`);
      drawNow();
      state("failed");
    }
  };
  worker.onerror = (e) => {
    show("stderr", `capsa: the program could not run: ${e.message}\n`);
    drawNow();
    state("failed");
  };
  startClock();
  worker.postMessage({ type: "start", site, assets, env: given.env, dirs: given.dirs });
}

main().catch((e) => {
  show("stderr", `capsa: ${e}\n`);
  drawNow();
  state("failed");
});
