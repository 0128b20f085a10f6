# Rust's symbol names, without what changes from build to build: the hash at
# the end of a legacy name, the crate disambiguators in a v0 one, the suffix
# ThinLTO gives a local function it promotes. Other names are left as they are.
#
#   awk -v keys=1 -f names.awk NAMES      each name's key, once, in order
#   awk -f names.awk NM_OUTPUT KEYS       the names in NM_OUTPUT (`nm -P`)
#                                         with each key, in the keys' order;
#                                         a key none has, as it is
function key(n) {
  sub(/\.llvm\.[0-9]+$/, "", n)
  if (n ~ /^_ZN/) sub(/17h[0-9a-f]+E$/, "E", n)
  else if (n ~ /^_R/) gsub(/Cs[0-9A-Za-z]*_/, "C_", n)
  return n
}
keys {
  k = key($1)
  if (!(k in seen)) { seen[k] = 1; print k }
  next
}
FNR == NR {
  if ($2 ~ /^[TtWw]$/ && !($1 in seen)) {
    seen[$1] = 1
    k = key($1)
    names[k] = names[k] $1 "\n"
  }
  next
}
{
  if ($0 in names) printf "%s", names[$0]
  else print
}
