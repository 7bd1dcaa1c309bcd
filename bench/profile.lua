-- Stable instruction counts under `valgrind --tool=callgrind` (`make profile`, through
-- bench/profile.sh, which subtracts the setup run from the others and prints ratios that,
-- unlike times, do not depend on the machine's load):
--   lua5.4 bench/profile.lua setup|compile|merge|reload N   figure 1: a module of 3000
--       functions; N times loadfile + run of a new version (the floor), a reload with
--       `replace = false` (the merge alone), or a reload with the walk (the default)
--   lua5.4 bench/profile.lua heap|gc|walk                   figure 2: a heap of 300k tables;
--       one full collection, or one reload (of a 100-function module) with the walk
package.path = "./?.lua;" .. package.path
local lib = require "bench.lib"
local gen = require "bench.gen"
local hotreload = require "hotreload"

local mode, n = arg[1], tonumber(arg[2] or 3)
local dir = lib.scratch()
local name = "bench_profile"
local path = dir .. "/" .. name .. ".lua"

if mode == "heap" or mode == "gc" or mode == "walk" then
  lib.write(path, gen.module(100, "a", 10))
  require(name)
  local heap = gen.heap(300000)
  lib.write(path, gen.module(100, "b", 10))
  lib.collect()
  collectgarbage("stop") -- no collection steps but the one measured
  if mode == "gc" then
    collectgarbage("collect")
  elseif mode == "walk" then
    assert(hotreload.reload(name))
  end
  assert(#heap > 0)
else
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
        error("mode: setup, compile, merge, reload, heap, gc or walk")
      end
    end
  end
end
lib.remove_tree(dir)
os.exit(0) -- no lua_close: its final collection is not part of any figure
