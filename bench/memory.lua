-- Figure 5: memory over time. The Lua heap and the process RSS after 1000 reloads of a module
-- against after 10 (the baseline), in the same process: growth means something keeps old
-- versions alive.
local lib = require "bench.lib"
local gen = require "bench.gen"
local hotreload = require "hotreload"

local quick = os.getenv("HOTRELOAD_BENCH_QUICK")

return function()
  local dir = lib.scratch()
  local name = "bench_mem"
  local path = dir .. "/" .. name .. ".lua"
  local sources = { gen.module(100, "a", 200), gen.module(100, "b", 200) }
  lib.write(path, sources[1])
  require(name)
  local function reloads(from, to)
    for i = from, to do
      lib.write(path, sources[i % 2 + 1])
      assert(hotreload.reload(name))
    end
    lib.collect()
    return collectgarbage("count") * 1024, lib.rss() or 0
  end
  local last = quick and 100 or 1000
  local heap10, rss10 = reloads(1, 10)
  local heap_n, rss_n = reloads(11, last)
  lib.remove_tree(dir)
  local kib = 1 / 1024
  return {
    { figure = ("Lua heap after %d reloads vs after 10"):format(last), value = heap_n * kib,
      baseline = heap10 * kib, unit = "KiB", target = 1.05 },
    { figure = ("process RSS after %d reloads vs after 10"):format(last), value = rss_n * kib,
      baseline = rss10 * kib, unit = "KiB", target = 1.05 },
  }
end
