-- Stable instruction counts for figure 1, under `valgrind --tool=callgrind` (`make profile`):
--   lua5.4 bench/profile.lua setup|compile|reload|merge N
-- `setup` writes and loads the 3000-function module; the others then do N times: loadfile +
-- run of a new version (the floor), a reload with the walk (the default), or a reload with
-- `replace = false` (the merge alone). bench/profile.sh subtracts setup from each and prints
-- the ratios, which, unlike times, do not depend on the machine's load.
package.path = "./?.lua;" .. package.path
local lib = require "bench.lib"
local gen = require "bench.gen"
local hotreload = require "hotreload"

local mode, n = arg[1], tonumber(arg[2] or 3)
local dir = lib.scratch()
local name = "bench_profile"
local path = dir .. "/" .. name .. ".lua"
local sources = {}
for i = 0, n do sources[i] = gen.module(3000, "p" .. i) end
lib.write(path, sources[0])
require(name)
lib.collect()
if mode ~= "setup" then
  for i = 1, n do
    lib.write(path, sources[i])
    if mode == "compile" then
      assert(loadfile(path))()
    elseif mode == "reload" then
      assert(hotreload.reload(name))
    elseif mode == "merge" then
      assert(hotreload.reload(name, { replace = false }))
    else
      error("mode: setup, compile, reload or merge")
    end
  end
end
lib.remove_tree(dir)
