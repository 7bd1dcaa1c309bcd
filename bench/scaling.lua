-- Figure 6: how the cost of a reload grows, with the size of the module (100, 1k, 10k
-- functions; each against loadfile + run of the same source) and with the size of the heap
-- the walk goes through (0, 100k, 1M tables, a module of 1000 functions; each against a full
-- collection of that heap).
local lib = require "bench.lib"
local gen = require "bench.gen"
local hotreload = require "hotreload"

local quick = os.getenv("HOTRELOAD_BENCH_QUICK")

return function()
  local dir = lib.scratch()
  local rows = {}
  local v = gen.versions("s", 200)
  local runs = quick and 2 or 5
  local sizes = quick and { 100, 1000 } or { 100, 1000, 10000 }
  for _, n in ipairs(sizes) do
    local name = "bench_scale_" .. n
    local path = dir .. "/" .. name .. ".lua"
    v.edit(path, n)
    require(name)
    local compile, reload, ratio = lib.interleaved({
      v.load_run(path, n),
      { function() assert(hotreload.reload(name)) end, v.fresh(path, n) },
    }, runs)
    rows[#rows + 1] = { figure = ("scaling: reload of %d functions vs loadfile+run"):format(n),
      value = reload * 1e3, baseline = compile * 1e3, ratio = ratio(2, 1), unit = "ms" }
  end
  local name = "bench_scale_1000"
  local path = dir .. "/" .. name .. ".lua"
  for _, tables in ipairs(quick and { 0, 10000 } or { 0, 100000, 1000000 }) do
    lib.collect() -- the previous heap goes
    local heap = gen.heap(tables)
    local full_gc, reload, ratio = lib.interleaved({
      { function() collectgarbage("collect") end },
      { function() assert(hotreload.reload(name)) end, v.fresh(path, 1000) },
    }, runs)
    rows[#rows + 1] = { figure = ("scaling: reload with %dk heap tables vs full GC"):format(
      math.floor(#heap * 2 / 1000)), value = reload * 1e3, baseline = full_gc * 1e3,
      ratio = ratio(2, 1), unit = "ms" }
  end
  lib.remove_tree(dir)
  return rows
end
