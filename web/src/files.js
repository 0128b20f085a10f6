// The guest's files in the page: trees in memory (preview2-shim's in-memory
// filesystem), each mounted read-only or read-write. A read-only mount
// refuses every change, and nothing may be moved or linked into it or out
// of it, whatever descriptor the guest holds.
import { InMemoryFilesystemAdapter, UNWRAP_DESCRIPTOR } from "@bytecodealliance/preview2-shim/in-memory-filesystem";

const inMemory = new InMemoryFilesystemAdapter();

const READ_ONLY = "read-only";

/** A descriptor of an in-memory tree, with the mount's access. */
class Guarded {
  #inner;
  #writable;
  constructor(inner, writable) {
    this.#inner = inner;
    this.#writable = writable;
    if (writable) {
      // Lets the in-memory filesystem see through to its own descriptor
      // when a writable directory is the target of a rename or link.
      this[UNWRAP_DESCRIPTOR] = inner;
    }
  }
  static innerOf(other, mustWrite) {
    if (!(other instanceof Guarded)) throw "bad-descriptor";
    if (mustWrite && !other.#writable) throw READ_ONLY;
    return other.#inner;
  }
  #write() {
    if (!this.#writable) throw READ_ONLY;
    return this.#inner;
  }
  readViaStream(offset) { return this.#inner.readViaStream(offset); }
  writeViaStream(offset) { return this.#write().writeViaStream(offset); }
  appendViaStream() { return this.#write().appendViaStream(); }
  advise(o, l, a) { return this.#inner.advise(o, l, a); }
  syncData() { return this.#inner.syncData(); }
  getFlags() {
    return this.#writable ? this.#inner.getFlags() : { read: true };
  }
  getType() { return this.#inner.getType(); }
  setSize(size) { return this.#write().setSize(size); }
  setTimes(a, m) { return this.#write().setTimes(a, m); }
  read(len, offset) { return this.#inner.read(len, offset); }
  write(buf, offset) { return this.#write().write(buf, offset); }
  readDirectory() { return this.#inner.readDirectory(); }
  sync() { return this.#inner.sync(); }
  createDirectoryAt(path) { return this.#write().createDirectoryAt(path); }
  stat() { return this.#inner.stat(); }
  statAt(flags, path) { return this.#inner.statAt(flags, path); }
  setTimesAt(f, p, a, m) { return this.#write().setTimesAt(f, p, a, m); }
  linkAt(oldFlags, oldPath, newDescriptor, newPath) {
    return this.#write().linkAt(oldFlags, oldPath, Guarded.innerOf(newDescriptor, true), newPath);
  }
  openAt(pathFlags, path, openFlags, flags) {
    if (!this.#writable && (openFlags.create || openFlags.truncate || flags.write || flags.mutateDirectory)) {
      throw READ_ONLY;
    }
    return new Guarded(this.#inner.openAt(pathFlags, path, openFlags, flags), this.#writable);
  }
  readlinkAt(path) { return this.#inner.readlinkAt(path); }
  removeDirectoryAt(path) { return this.#write().removeDirectoryAt(path); }
  renameAt(oldPath, newDescriptor, newPath) {
    return this.#write().renameAt(oldPath, Guarded.innerOf(newDescriptor, true), newPath);
  }
  symlinkAt(oldPath, newPath) { return this.#write().symlinkAt(oldPath, newPath); }
  unlinkFileAt(path) { return this.#write().unlinkFileAt(path); }
  isSameObject(other) {
    return other instanceof Guarded && this.#inner.isSameObject(Guarded.innerOf(other, false));
  }
  metadataHash() { return this.#inner.metadataHash(); }
  metadataHashAt(flags, path) { return this.#inner.metadataHashAt(flags, path); }
}

/** The adapter `createFilesystem` takes: a mount is `{ tree, writable }`. */
export const guardedAdapter = {
  getRoot({ tree, writable }) {
    return new Guarded(inMemory.getRoot(tree), writable);
  },
};

/**
 * Reads a file archive as capsa writes it: gzip of "CAPSAFS1", then for
 * each file a little-endian u32 path length, the UTF-8 path, a u32 data
 * length and the data. Returns a tree `{ dir: { name: { source } | { dir } } }`.
 */
export async function unpack(bytes, tree = { dir: {} }) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  const data = new Uint8Array(await new Response(stream).arrayBuffer());
  const magic = new TextDecoder().decode(data.subarray(0, 8));
  if (magic !== "CAPSAFS1") throw new Error("not a capsa file archive");
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const dec = new TextDecoder("utf-8", { fatal: true });
  let at = 8;
  const take = (n) => {
    if (at + n > data.length) throw new Error("a truncated file archive");
    const out = data.subarray(at, at + n);
    at += n;
    return out;
  };
  while (at < data.length) {
    const pathLen = view.getUint32(take(4).byteOffset - data.byteOffset, true);
    const path = dec.decode(take(pathLen));
    const len = view.getUint32(take(4).byteOffset - data.byteOffset, true);
    addFile(tree, path, take(len));
  }
  return tree;
}

/** Puts `source` at the relative `path` of `tree`, making its directories. */
export function addFile(tree, path, source) {
  const parts = path.split("/");
  if (parts.some((p) => p === "" || p === "." || p === "..")) throw new Error(`a bad path in a file archive: ${path}`);
  let dir = tree;
  for (const p of parts.slice(0, -1)) {
    const next = Object.hasOwn(dir.dir, p) ? dir.dir[p] : (dir.dir[p] = { dir: {} });
    if (!next.dir) throw new Error(`a file archive puts a file below a file: ${path}`);
    dir = next;
  }
  dir.dir[parts[parts.length - 1]] = { source };
}

/** Every file of a tree, as [relative path, bytes]. */
export function listFiles(tree, prefix = "") {
  const out = [];
  for (const [name, entry] of Object.entries(tree.dir)) {
    if (entry.dir) out.push(...listFiles(entry, prefix + name + "/"));
    else if (entry.source) out.push([prefix + name, entry.source instanceof Uint8Array ? entry.source : new TextEncoder().encode(entry.source)]);
  }
  return out;
}
