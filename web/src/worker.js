// The bundle's program, run in a Web Worker. Its only way out is the WASI
// imports built here: preview2-shim's implementations for the browser,
// with the bundle's permissions checked in front of them. The guest gets
// no JavaScript: no module that reaches the page, no eval, no DOM, no
// storage, no sockets. A request goes out through fetch only to a host and
// port the bundle asked for; its files are trees in this worker's memory.
//
// Messages from the page: {type: "start", site, assets, env, dirs};
// {type: "stdin", text}; {type: "eof"}.
// To the page: {type: "out", runs: [[stream, text], ...]} (stream is
// stdout, stderr or denied);
// {type: "stdin-wait"}; {type: "exit", code, dirs}; {type: "fail", text}.
import * as cli from "@bytecodealliance/preview2-shim/cli";
import * as clocks from "@bytecodealliance/preview2-shim/clocks";
import * as filesystem from "@bytecodealliance/preview2-shim/filesystem";
import * as http from "@bytecodealliance/preview2-shim/http";
import * as io from "@bytecodealliance/preview2-shim/io";
import * as random from "@bytecodealliance/preview2-shim/random";
import * as sockets from "@bytecodealliance/preview2-shim/sockets";
import { decide, parseRule } from "./rules.js";
import { guardedAdapter, unpack, listFiles, addFile } from "./files.js";
import { denialText } from "./text.js";

const post = (msg) => self.postMessage(msg);

class Exit extends Error {
  constructor(code) {
    super(`exit ${code}`);
    this.exitCode = code;
  }
}

// stdin: lines the user typed in the page, read when the guest blocks.
const stdin = { chunks: [], eof: false, waiting: null, wakers: [] };
function stdinArrived() {
  stdin.waiting?.();
  for (const wake of stdin.wakers.splice(0)) wake();
}
function readStdin(len) {
  const n = Number(len);
  const give = () => {
    if (stdin.chunks.length) {
      const head = stdin.chunks[0];
      if (head.length <= n) return stdin.chunks.shift();
      stdin.chunks[0] = head.subarray(n);
      return head.subarray(0, n);
    }
    throw { tag: "closed" };
  };
  if (stdin.chunks.length || stdin.eof) return give();
  flushOutput();
  post({ type: "stdin-wait" });
  return new Promise((resolve, reject) => {
    stdin.waiting = () => {
      stdin.waiting = null;
      try {
        resolve(give());
      } catch (e) {
        reject(e);
      }
    };
  });
}
// `read` waits too (capsa makes it a suspending import): a guest that
// polls stdin with non-blocking reads would otherwise spin and never let
// the page's message in.
const stdinHandler = {
  blockingRead: readStdin,
  read: readStdin,
  subscribe() {
    if (stdin.chunks.length || stdin.eof) return io.pollableCreate();
    return io.pollableCreate(new Promise((resolve) => stdin.wakers.push(resolve)));
  },
};

// The guest's output, sent to the page as it comes, up to 64 messages in
// each 30 ms; past that, gathered into one message per 30 ms or 64 KiB. A
// message per write would flood the page's main thread (a loop of one-byte
// writes froze it, and with it the time limit); batching everything would
// hold back the last line of a program that then loops until its limit.
// Output and denial lines count against one cap; past it the page ends the
// Worker.
let outputLeft = Infinity;
const pending = [];
let pendingBytes = 0;
let windowStart = 0;
let windowCount = 0;
let flushTimer = null;
const WINDOW_MS = 30;
const WINDOW_MESSAGES = 64;
const FLUSH_BYTES = 64 << 10;

function flushOutput() {
  clearTimeout(flushTimer);
  flushTimer = null;
  if (pending.length) post({ type: "out", runs: pending.splice(0) });
  pendingBytes = 0;
}

function emit(stream, text, bytes) {
  const now = performance.now();
  if (now - windowStart >= WINDOW_MS) {
    windowStart = now;
    windowCount = 0;
  }
  const last = pending[pending.length - 1];
  if (last && last[0] === stream) last[1] += text;
  else pending.push([stream, text]);
  pendingBytes += bytes;
  if (windowCount < WINDOW_MESSAGES || pendingBytes >= FLUSH_BYTES) {
    windowCount++;
    flushOutput();
  } else if (!flushTimer) {
    flushTimer = setTimeout(flushOutput, WINDOW_MS);
  }
}

/** Takes `n` bytes from the cap; false (and the page told) once it is used up. */
function spend(n) {
  if (outputLeft <= 0) return false;
  if (n >= outputLeft) {
    outputLeft = 0;
    return false;
  }
  outputLeft -= n;
  return true;
}

function overLimit() {
  flushOutput();
  post({ type: "output-limit" });
}

function output(stream) {
  const dec = new TextDecoder();
  return {
    // As capsa run's own output streams: one permit for any write, so a
    // large write is never cut short (the shim's default is 1,000,000).
    checkWrite() {
      return 1n << 30n;
    },
    write(bytes) {
      if (outputLeft <= 0) return;
      const n = bytes.length;
      const room = outputLeft;
      if (!spend(n)) {
        // What fits, then the page ends the program (as capsa run cuts).
        emit(stream, dec.decode(bytes.subarray(0, room)), 0);
        overLimit();
        return;
      }
      emit(stream, dec.decode(bytes, { stream: true }), n);
    },
    flush() {},
    blockingFlush() {},
  };
}

/** A denial line, in order with the output, batched with it and counted against its cap. */
function deny(text) {
  if (outputLeft <= 0) return;
  if (!spend(text.length + 1)) {
    overLimit();
    return;
  }
  emit("denied", text + "\n", text.length + 1);
}

/**
 * wasi:http/outgoing-handler, asking the bundle's rules before fetch. The
 * decision is made on the URL preview2-shim will fetch, built the way it
 * builds it (scheme, authority and path-with-query concatenated) and parsed
 * by the browser's own URL parser: a path that does not start with "/"
 * could otherwise move the host (`example.com` + `.evil.net/`).
 */
function guardedHttp(rules) {
  return {
    handle(request, options) {
      const scheme = request.scheme();
      if (scheme && scheme.tag !== "HTTP" && scheme.tag !== "HTTPS") throw { tag: "HTTP-protocol-error" };
      const tls = !scheme || scheme.tag === "HTTPS";
      const authority = request.authority() || "";
      const pathWithQuery = request.pathWithQuery() || "";
      if (!authority || !pathWithQuery.startsWith("/")) throw { tag: "HTTP-request-URI-invalid" };
      let url;
      try {
        url = new URL(`${tls ? "https:" : "http:"}//${authority}${pathWithQuery}`);
      } catch {
        throw { tag: "HTTP-request-URI-invalid" };
      }
      if (url.username || url.password || url.protocol !== (tls ? "https:" : "http:")) {
        throw { tag: "HTTP-request-URI-invalid" };
      }
      const port = url.port ? Number(url.port) : tls ? 443 : 80;
      const host = url.hostname;
      const verdict = decide(rules, host, port);
      if (!verdict.allowed) {
        const method = request.method();
        const m = method.tag === "other" ? method.val : method.tag.toUpperCase();
        deny(denialText(m, `${url.protocol}//${host.replace(/\.$/, "")}:${port}${url.pathname}`, verdict.reason, verdict.hint));
        throw { tag: "HTTP-request-denied" };
      }
      return http.outgoingHandler.handle(request, options);
    },
  };
}

const refused = () => {
  throw "access-denied";
};

// The host's own fetch, for the site's files; the guest's requests go
// through preview2-shim's `globalThis.fetch`, replaced below so that a
// redirect is never followed: the page cannot check where it leads before
// the browser goes there (capsa run checks each hop).
const siteFetch = globalThis.fetch.bind(globalThis);
globalThis.fetch = async (url, init = {}) => {
  const response = await siteFetch(url, { ...init, redirect: "manual", credentials: "omit", referrerPolicy: "no-referrer" });
  if (response.type === "opaqueredirect") {
    deny(denialText(init.method || "GET", String(url).split("?")[0], "it answered with a redirect, which a page cannot check before following", null));
    throw new TypeError("a redirect was refused");
  }
  return response;
};

/** Compiles a core module, streaming where the server says application/wasm. */
async function compile(url) {
  const response = await siteFetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  if ((response.headers.get("content-type") || "").startsWith("application/wasm")) {
    return WebAssembly.compileStreaming(response);
  }
  return WebAssembly.compile(await response.arrayBuffer());
}

async function start({ site, assets, env, dirs }) {
  outputLeft = site.limits.max_output;
  // The file archives are asked for first (a browser opens six connections
  // to a server: behind the large modules they waited), then every core
  // module is fetched and compiled at once, while the files are unpacked,
  // rather than one by one as instantiation asks for them.
  const archive = async (url) => (url ? unpack(await (await siteFetch(url)).arrayBuffer()) : { dir: {} });
  const archives = Promise.all([archive(assets.app), archive(assets.stdlib)]);
  archives.catch(() => {});
  const modules = {};
  for (const [name, url] of Object.entries(assets.core)) {
    modules[name] = compile(url);
    modules[name].catch(() => {});
  }
  const glue = import(assets.component);
  const rules = site.ask.net.map((a) => parseRule(a.rule));
  const mounts = {};
  const [app, stdlib] = await archives;
  mounts["/app"] = { tree: app, writable: false };
  if (assets.stdlib) mounts[site.stdlib] = { tree: stdlib, writable: false };
  const scratch = { dir: {} };
  mounts[site.cwd] = { tree: scratch, writable: true };
  const asked = {};
  for (const d of site.ask.dirs) {
    const given = dirs[d.name];
    if (!given) continue;
    const tree = { dir: {} };
    for (const [path, bytes] of given) addFile(tree, path, bytes);
    asked[d.name] = tree;
    mounts[d.guest] = { tree, writable: d.access === "read-write" };
  }
  const fs = filesystem.createFilesystem({ adapter: guardedAdapter, preopens: mounts });
  const environment = {};
  for (const e of site.ask.env) {
    if (Object.hasOwn(env, e.name)) environment[e.name] = String(env[e.name]);
  }
  const c = cli.createCli({
    arguments: site.argv,
    environment,
    initialCwd: site.cwd,
    stdout: output("stdout"),
    stderr: output("stderr"),
    stdin: stdinHandler,
  });
  const exit = {
    exit(status) {
      throw new Exit(status.tag === "err" ? 1 : 0);
    },
    exitWithCode(code) {
      throw new Exit(code);
    },
  };
  const none = {
    createTcpSocket: refused,
    createUdpSocket: refused,
    resolveAddresses: refused,
  };
  const imports = {
    "capsa:python/process": { exitWithCode: (code) => { throw new Exit(code); } },
    "wasi:cli/environment": c.environment,
    "wasi:cli/exit": exit,
    "wasi:cli/stderr": c.stderr,
    "wasi:cli/stdin": c.stdin,
    "wasi:cli/stdout": c.stdout,
    "wasi:cli/terminal-input": c.terminalInput,
    "wasi:cli/terminal-output": c.terminalOutput,
    "wasi:cli/terminal-stderr": c.terminalStderr,
    "wasi:cli/terminal-stdin": c.terminalStdin,
    "wasi:cli/terminal-stdout": c.terminalStdout,
    "wasi:clocks/monotonic-clock": clocks.monotonicClock,
    "wasi:clocks/wall-clock": clocks.wallClock,
    "wasi:filesystem/preopens": fs.preopens,
    "wasi:filesystem/types": fs.types,
    "wasi:http/outgoing-handler": guardedHttp(rules),
    "wasi:http/types": http.types,
    "wasi:io/error": io.error,
    "wasi:io/poll": io.poll,
    "wasi:io/streams": io.streams,
    "wasi:random/insecure": random.insecure,
    "wasi:random/insecure-seed": random.insecureSeed,
    "wasi:random/random": random.random,
    "wasi:sockets/instance-network": sockets.instanceNetwork,
    "wasi:sockets/ip-name-lookup": { ...sockets.ipNameLookup, resolveAddresses: none.resolveAddresses },
    "wasi:sockets/network": sockets.network,
    "wasi:sockets/tcp": sockets.tcp,
    "wasi:sockets/tcp-create-socket": { createTcpSocket: none.createTcpSocket },
    "wasi:sockets/udp": sockets.udp,
    "wasi:sockets/udp-create-socket": { createUdpSocket: none.createUdpSocket },
  };
  const { instantiate } = await glue;
  const getCoreModule = (name) => {
    if (!Object.hasOwn(modules, name)) throw new Error(`the site has no ${name}`);
    return modules[name];
  };
  const started = performance.now();
  const instance = await instantiate(getCoreModule, imports);
  post({ type: "ready", ms: performance.now() - started });
  let code = 0;
  try {
    await instance.run.run();
  } catch (e) {
    if (e instanceof Exit) code = e.exitCode;
    else if (e && e.exitError) code = e.code;
    else if (e && e.payload === undefined && e.name === "ComponentError") code = 1;
    else throw e;
  }
  const out = {};
  for (const [name, tree] of Object.entries(asked)) out[name] = listFiles(tree);
  flushOutput();
  post({ type: "exit", code, dirs: out, scratch: listFiles(scratch) });
}

self.onmessage = (e) => {
  const msg = e.data;
  if (msg.type === "start") {
    start(msg).catch((err) => {
      flushOutput();
      post({ type: "fail", text: String((err && err.stack) || err) });
    });
  } else if (msg.type === "stdin") {
    stdin.chunks.push(new TextEncoder().encode(msg.text));
    stdinArrived();
  } else if (msg.type === "eof") {
    stdin.eof = true;
    stdinArrived();
  }
};
