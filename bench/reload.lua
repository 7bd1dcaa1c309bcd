-- Figures 1 and 2: the cost of a reload against what a program pays anyway.
-- 1. A module of 3000 functions reloaded with the full merge ÷ `loadfile` + run of the same
--    new source: the merge alone (`replace = false`), and with the walk over the (small)
--    heap of the bench process (the default). Before that, the seed document's naive copy
--    snippet on a copy of the module, the "no semantics" reference, against its own
--    `loadfile` + run; the copy is then dropped, so figure 1's walk does not cover a second
--    module of 3000 functions that only the bench has.
-- 2. The same reload with about 900k live objects on the heap ÷ one full
--    `collectgarbage("collect")` of that heap.
local lib = require "bench.lib"
local gen = require "bench.gen"
local hotreload = require "hotreload"

-- The seed document's reload_module (kept once, in spec/naive.lua).
local naive_reload = require("spec.naive").reload_module

local quick = os.getenv("HOTRELOAD_BENCH_QUICK")

return function()
  local dir = lib.scratch()
  local n = quick and 300 or 3000
  local runs = quick and 3 or 25
  local name, naive = "bench_big", "bench_big_naive"
  local path, naive_path = dir .. "/" .. name .. ".lua", dir .. "/" .. naive .. ".lua"
  -- every run compiles a new version: each tag changes every function body
  local v = gen.versions("v")

  -- each group timed in turn in each round (see lib.interleaved)
  v.edit(naive_path, n)
  require(naive)
  local naive_compile, copy, naive_ratio = lib.interleaved({
    v.load_run(naive_path, n),
    -- (its `require` bypasses hotreload's wrapper, which would record a base for it)
    { function() lib.without_capture(function() naive_reload(naive) end) end,
      v.fresh(naive_path, n) },
  }, runs)
  package.loaded[naive] = nil
  lib.collect()

  v.edit(path, n)
  require(name)
  local load_run, reload, merge, ratio = lib.interleaved({
    v.load_run(path, n),
    { function() assert(hotreload.reload(name)) end, v.fresh(path, n) },
    { function() assert(hotreload.reload(name, { replace = false })) end, v.fresh(path, n) },
  }, runs)

  -- figure 2: the same reload over a big heap, against a full collection of it
  local heap = gen.heap(quick and 60000 or 600000) -- 2 tables + 1 string per entry
  local full_gc, big, big_ratio = lib.interleaved({
    { function() collectgarbage("collect") end },
    { function() assert(hotreload.reload(name)) end, v.fresh(path, n) },
  }, quick and 3 or 15)
  local objects = #heap * 3
  heap = nil -- luacheck: ignore
  lib.collect()
  lib.remove_tree(dir)
  local ms = 1e3
  return {
    { figure = ("reload of %d functions, merge only, vs loadfile+run"):format(n),
      value = merge * ms, baseline = load_run * ms, ratio = ratio(3, 1), unit = "ms", target = 1.5 },
    { figure = ("reload of %d functions, merge + walk, vs loadfile+run"):format(n),
      value = reload * ms, baseline = load_run * ms, ratio = ratio(2, 1), unit = "ms", target = 1.5 },
    { figure = ("naive copy snippet (no semantics) vs loadfile+run"), value = copy * ms,
      baseline = naive_compile * ms, ratio = naive_ratio(2, 1), unit = "ms" },
    { figure = ("reload with a heap of %dk objects vs full GC"):format(math.floor(objects / 1000)),
      value = big * ms, baseline = full_gc * ms, ratio = big_ratio(2, 1), unit = "ms", target = 2 },
  }
end
