#!/bin/sh
# Instruction counts (callgrind) of a reload against loadfile + run of the same source, for
# one interpreter: bench/profile.sh lua5.4 build/lua54   (see bench/profile.lua)
set -eu
lua=$1 so=$2 n=${3:-3}
out=${TMPDIR:-/tmp}/hotreload-profile-$$
mkdir -p "$out"
count() {
  valgrind --tool=callgrind --callgrind-out-file="$out/$1.out" \
    "$lua" -e "package.cpath='$so/?.so;'..package.cpath" bench/profile.lua "$1" "$n" \
    >/dev/null 2>"$out/$1.log"
  sed -n 's/^summary: //p;s/^totals: //p' "$out/$1.out" | head -1
}
setup=$(count setup) compile=$(count compile) merge=$(count merge) reload=$(count reload)
awk -v s="$setup" -v c="$compile" -v m="$merge" -v r="$reload" -v n="$n" -v lua="$lua" 'BEGIN {
  printf "| %s | loadfile+run of 3000 functions | %.1f M instructions |\n", lua, (c - s) / n / 1e6
  printf "| %s | reload, merge only | %.1f M instructions | %.2f× |\n", lua, (m - s) / n / 1e6, (m - s) / (c - s)
  printf "| %s | reload, merge + walk | %.1f M instructions | %.2f× |\n", lua, (r - s) / n / 1e6, (r - s) / (c - s)
}'
callgrind_annotate --inclusive=no "$out/merge.out" 2>/dev/null | sed -n '/^-*$/,$p' | grep -E "^ *[0-9,]+ " | head -25 > "$out/top.txt" || true
echo "top functions of the merge (self instructions): $out/top.txt"
