// Text from the guest shown in the page: a denial line as the command line
// gives it, with control and bidirectional characters escaped so a name
// cannot forge or reorder what the user reads.

const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

export function escapeText(s) {
  return s.replace(UNSAFE, (c) => `\\u{${c.codePointAt(0).toString(16)}}`);
}

const MAX_TARGET = 512;

/** `denied: OP TARGET (REASON)` and a `hint:` line, as report::denial_text writes them. */
export function denialText(op, target, reason, hint) {
  const cut = target.length > MAX_TARGET;
  let msg = `capsa: denied: ${escapeText(op)} ${escapeText(cut ? target.slice(0, MAX_TARGET) : target)}`;
  if (cut) msg += "...";
  if (reason) msg += ` (${escapeText(reason.length > MAX_TARGET ? reason.slice(0, MAX_TARGET) + "..." : reason)})`;
  if (hint && !cut && hint.length <= MAX_TARGET) msg += `\n  hint: ${escapeText(hint)}`;
  return msg;
}
