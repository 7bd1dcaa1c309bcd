#!/bin/sh
# Instruction counts (callgrind) for figures 1 and 2, for one interpreter:
#   bench/profile.sh lua5.4 build/lua54 [N]      (see bench/profile.lua)
set -eu
lua=$1 so=$2 n=${3:-2}
out=${TMPDIR:-/tmp}/hotreload-profile-$$
mkdir -p "$out"
count() { # mode [file name]
  f=${2:-$1}
  valgrind --tool=callgrind --callgrind-out-file="$out/$f.out" \
    "$lua" -e "package.cpath='$so/?.so;'..package.cpath" bench/profile.lua "$1" "$n" \
    >/dev/null 2>"$out/$f.log"
  sed -n 's/^summary: //p' "$out/$f.out" | head -1
}
setup=$(count setup) compile=$(count compile) merge=$(count merge) reload=$(count reload)
heap=$(count heap) gc=$(count gc) walk=$(count walk)
# the same walk by lua_next, where the VM reads tables in place (Lua 5.4)
portable=$walk
if [ "$("$lua" -e "package.cpath='$so/?.so;'..package.cpath print(require('hotreload').table_walk)")" = "in place" ]; then
  portable=$(HOTRELOAD_PORTABLE_WALK=1 count walk walk-portable)
fi
awk -v s="$setup" -v c="$compile" -v m="$merge" -v r="$reload" -v n="$n" -v lua="$lua" \
    -v h="$heap" -v g="$gc" -v w="$walk" -v p="$portable" 'BEGIN {
  printf "| %s | loadfile+run, 3000 functions | %.1f M | | |\n", lua, (c - s) / n / 1e6
  printf "| %s | reload, merge only | %.1f M | %.2f× | ≤ 1.5× |\n", lua, (m - s) / n / 1e6, (m - s) / (c - s)
  printf "| %s | reload, merge + walk | %.1f M | %.2f× | ≤ 1.5× |\n", lua, (r - s) / n / 1e6, (r - s) / (c - s)
  printf "| %s | full GC, 300k tables | %.1f M | | |\n", lua, (g - h) / 1e6
  printf "| %s | reload with the walk, 300k tables | %.1f M | %.2f× | ≤ 2× |\n", lua, (w - h) / 1e6, (w - h) / (g - h)
  if (p != w)
    printf "| %s | the same, tables read by lua_next | %.1f M | %.2f× | |\n", lua, (p - h) / 1e6, (p - h) / (g - h)
}'
echo "callgrind files: $out (callgrind_annotate $out/walk.out)"
