// The bundle's network asks, decided for a request the guest makes in the
// page. A rule is written as capsa shows it (`host`, `host:port`, `*.host`,
// an IP, `[v6]:port`, a CIDR network) and means what it means on the command
// line, with one narrowing: the page cannot see which address the browser
// resolves a name to, so a name rule is decided on the name alone, and a
// CIDR network grants no request in the page (name the address instead).
// web/test/net-cases.json holds the cases both this file and the policy
// crate are tested against.

/** Parses one rule; throws an Error naming the rule if it is not one. */
export function parseRule(text) {
  const bad = (why) => new Error(`invalid network rule ${JSON.stringify(text)}: ${why}`);
  if (typeof text !== "string" || text.length === 0 || text.length > 300) throw bad("empty or too long");
  let host, port = null;
  if (text.startsWith("[")) {
    const end = text.indexOf("]");
    if (end < 0) throw bad("missing ]");
    host = text.slice(1, end);
    const rest = text.slice(end + 1);
    if (rest) {
      if (!rest.startsWith(":")) throw bad("expected :PORT after ]");
      port = parsePort(rest.slice(1), bad);
    }
  } else if ((text.match(/:/g) || []).length > 1) {
    host = text; // a bare IPv6 address or network
  } else {
    const i = text.lastIndexOf(":");
    if (i >= 0) {
      host = text.slice(0, i);
      port = parsePort(text.slice(i + 1), bad);
    } else {
      host = text;
    }
  }
  if (host.includes("/")) {
    const [addr, len] = host.split("/");
    const ip = parseIp(addr);
    if (!ip || !/^\d{1,3}$/.test(len) || Number(len) > ip.length * 8) throw bad("not a valid network");
    return { kind: "cidr", ip, len: Number(len), port, text };
  }
  const ip = parseIp(host);
  if (ip) return { kind: "ip", ip: canonical(ip), port, text };
  if (host.startsWith("*.")) {
    const name = normalizeName(host.slice(2));
    if (!name) throw bad("not a valid host name");
    return { kind: "wildcard", name, port, text };
  }
  const name = normalizeName(host);
  if (!name) throw bad("not a valid host name");
  return { kind: "name", name, port, text };
}

function parsePort(p, bad) {
  if (!/^\d{1,5}$/.test(p) || Number(p) < 1 || Number(p) > 65535) throw bad("invalid port (expected 1-65535)");
  return Number(p);
}

/** A lower-case name without its trailing dot, or null if it is not a DNS name. */
export function normalizeName(name) {
  let n = name.endsWith(".") ? name.slice(0, -1) : name;
  n = n.toLowerCase();
  if (!n || n.length > 253) return null;
  for (const label of n.split(".")) {
    if (!label || label.length > 63 || label.startsWith("-") || label.endsWith("-")) return null;
    if (!/^[a-z0-9_-]+$/.test(label)) return null;
  }
  return n;
}

/** Bytes of an IPv4 (4) or IPv6 (16) address, or null. */
export function parseIp(s) {
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(s)) {
    const parts = s.split(".").map(Number);
    if (parts.some((p, i) => p > 255 || (s.split(".")[i].length > 1 && s.split(".")[i][0] === "0"))) return null;
    return Uint8Array.from(parts);
  }
  if (!s.includes(":") || !/^[0-9a-fA-F:.]+$/.test(s)) return null;
  let head = s, tail = "";
  const dbl = s.indexOf("::");
  if (dbl >= 0) {
    if (s.indexOf("::", dbl + 1) >= 0) return null;
    head = s.slice(0, dbl);
    tail = s.slice(dbl + 2);
  }
  const groups = (part) => {
    if (part === "") return [];
    const out = [];
    const pieces = part.split(":");
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i];
      if (i === pieces.length - 1 && p.includes(".")) {
        const v4 = parseIp(p);
        if (!v4 || v4.length !== 4) return null;
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return null;
        out.push(parseInt(p, 16));
      }
    }
    return out;
  };
  const h = groups(head), t = groups(tail);
  if (!h || !t) return null;
  const fill = 8 - h.length - t.length;
  if (dbl >= 0 ? fill < 1 : fill !== 0) return null;
  const all = [...h, ...new Array(dbl >= 0 ? fill : 0).fill(0), ...t];
  const bytes = new Uint8Array(16);
  all.forEach((g, i) => { bytes[2 * i] = g >> 8; bytes[2 * i + 1] = g & 255; });
  return bytes;
}

/** An IPv4-mapped IPv6 address is judged as its IPv4 address. */
function canonical(ip) {
  if (ip.length === 16 && ip.slice(0, 10).every((b) => b === 0) && ip[10] === 255 && ip[11] === 255) {
    return ip.slice(12);
  }
  return ip;
}

function sameIp(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * Decides a request to `host:port` (host as the URL gives it: a name, an
 * IPv4 address, or an IPv6 address in brackets). Returns
 * `{ allowed: true, rule }` or `{ allowed: false, reason, hint }`, with the
 * reason and hint the command line would give.
 */
export function decide(rules, rawHost, port) {
  const host = rawHost.replace(/^\[/, "").replace(/\]$/, "").replace(/\.$/, "").toLowerCase();
  const ip = parseIp(host);
  if (ip) {
    const c = canonical(ip);
    const rule = rules.find((r) => r.kind === "ip" && sameIp(r.ip, c) && (r.port === null || r.port === port));
    if (rule) return { allowed: true, rule: rule.text };
    const shown = c.length === 16 ? `[${host}]:${port}` : `${ipText(c)}:${port}`;
    return { allowed: false, reason: `${shown} is not granted`, hint: `--allow-net=${shown}` };
  }
  const name = normalizeName(host);
  const named = name && rules.find((r) =>
    (r.kind === "name" && r.name === name) ||
    (r.kind === "wildcard" && name.endsWith("." + r.name) && name.length > r.name.length + 1));
  if (!named) {
    const shown = name || host;
    return { allowed: false, reason: `${shown} is not granted`, hint: `--allow-net=${shown}:${port}` };
  }
  const rule = rules.find((r) =>
    ((r.kind === "name" && r.name === name) ||
      (r.kind === "wildcard" && name.endsWith("." + r.name) && name.length > r.name.length + 1)) &&
    (r.port === null || r.port === port));
  if (rule) return { allowed: true, rule: rule.text };
  return { allowed: false, reason: `${name}:${port} is not granted`, hint: `--allow-net=${name}:${port}` };
}

function ipText(ip) {
  return Array.from(ip).join(".");
}
