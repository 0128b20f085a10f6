# Rust's symbol names, without what changes from build to build: the hash at
# the end of a legacy name; in a v0 one, the crate disambiguators and the
# back-references (offsets into the name, which move with them); the suffix
# ThinLTO gives a local function it promotes. Other names are left as they are.
#
#   awk -v keys=1 -f names.awk NAMES      each name's key, once, in order
#   awk -f names.awk KEYS NM_OUTPUT       the names in NM_OUTPUT (`nm -P`)
#                                         with each key, in the keys' order;
#                                         a key none has, as it is
function key(n) {
  sub(/\.llvm\.[0-9]+$/, "", n)
  if (n ~ /^_ZN/) sub(/17h[0-9a-f]+E$/, "E", n)
  else if (n ~ /^_R/) {
    gsub(/Cs[0-9A-Za-z]*_/, "C_", n)
    gsub(/B[0-9A-Za-z]*_/, "B_", n)
  }
  return n
}
keys {
  k = key($1)
  if (!(k in seen)) { seen[k] = 1; print k }
  next
}
FILENAME == ARGV[1] {
  if (!($1 in order)) { order[$1] = ++listed; list[listed] = $1 }
  next
}
$2 ~ /^[TtWw]$/ && !($1 in taken) {
  k = key($1)
  if (k in order) { taken[$1] = 1; names[k] = names[k] $1 "\n" }
}
END {
  if (keys) exit
  for (i = 1; i <= listed; i++) {
    k = list[i]
    if (k in names) printf "%s", names[k]
    else print k
  }
}
