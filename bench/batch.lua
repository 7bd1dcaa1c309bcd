-- Figure: the cost of a batch per module. A batch of N modules (`reload({...})`) ÷ N single
-- reloads of the same modules, per module, with 40,000 other modules loaded, at N = 100,
-- 1000 and 10,000 (the singles: the first 1000 of them). The merge only (`replace =
-- false`): with the walk, each single reload would also walk the 40,000 other modules.
local lib = require "bench.lib"
local hotreload = require "hotreload"

local quick = os.getenv("HOTRELOAD_BENCH_QUICK")

local function module_source(i)
  return ("local M = { v = %d }\nfunction M.f() return M.v + %d end\nreturn M\n"):format(i, i)
end

return function()
  local others = quick and 4000 or 40000
  for i = 1, others do package.loaded["bench_other_" .. i] = { v = i } end
  local rows = {}
  local runs = quick and 2 or 5
  for _, n in ipairs(quick and { 100, 1000 } or { 100, 1000, 10000 }) do
    local names, sources = {}, {}
    for i = 1, n do
      names[i] = ("bench_batch_%d_%d"):format(n, i)
      sources[names[i]] = module_source(i)
    end
    local opts = { source = sources, replace = false }
    local ok, err = hotreload.reload(names, opts) -- the first load
    local sample = math.min(n, 1000)
    if ok then
      local batch, single, ratio = lib.interleaved({
        { function() assert(hotreload.reload(names, opts)) end },
        { function()
          for i = 1, sample do
            local name = names[i]
            assert(hotreload.reload(name, { source = sources[name], replace = false }))
          end
        end },
      }, runs)
      rows[#rows + 1] = { figure = ("batch of %d modules vs single reloads, per module (%dk others)")
          :format(n, math.floor(others / 1000)), value = batch / n * 1e6, baseline = single / sample * 1e6,
        ratio = ratio(1, 2) * sample / n, unit = "us", target = 1.5 }
    else
      io.stderr:write(("batch of %d modules: %s\n"):format(n, err))
    end
    for _, name in ipairs(names) do package.loaded[name] = nil end
    lib.collect()
  end
  for i = 1, others do package.loaded["bench_other_" .. i] = nil end
  return rows
end
