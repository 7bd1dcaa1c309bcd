-- Figure: what `poll()` costs the frame for one saved module of 3000 functions when the file
-- was compiled ahead, off the Lua thread (`compile_ahead`, on by default), against `loadfile`
-- + run of the same new source (the compile floor) in the same rounds:
--   - the merge alone (`hotreload.defaults.replace = false`);
--   - the merge and the walk over a heap of about 900k objects;
-- and the save-to-visible latency of that module, with and without compiling ahead (the
-- worker's compile is then part of the latency, not of the frame).
local system = require "system"
local lib = require "bench.lib"
local gen = require "bench.gen"
local hotreload = require "hotreload"

local quick = os.getenv("HOTRELOAD_BENCH_QUICK")

-- Saves a new version, then waits (outside the timed part) until the worker compiled it.
local function saved(v, path, n)
  return function()
    local compiled = hotreload.stats().files_compiled_ahead
    v.edit(path, n)
    local deadline = lib.now() + 10
    repeat system.sleep(0.001) until hotreload.stats().files_compiled_ahead > compiled
      or lib.now() > deadline
    assert(hotreload.stats().files_compiled_ahead > compiled, "not compiled ahead within 10 s")
    lib.collect()
  end
end

-- The timed part: polls until the save is applied (a poll before the worker answered costs
-- next to nothing, see the idle figure).
local function apply()
  local n, errors
  repeat n, errors = hotreload.poll() until n > 0 or errors
  assert(n == 1 and not errors, errors and errors[1])
end

-- Save-to-visible latency of the module at `path`: the clock starts when the write returns.
local function latency(v, path, n, runs)
  local times = {}
  for r = 1, runs do
    v.edit(path, n)
    local t0 = lib.now()
    local done
    repeat done = hotreload.poll() > 0 until done or lib.now() > t0 + 10
    assert(done, "no reload within 10 s")
    times[r] = (lib.now() - t0) * 1e3
    lib.collect()
  end
  return lib.median(times)
end

return function()
  local dir = lib.scratch()
  local n = quick and 300 or 3000
  local runs = quick and 3 or 15
  local name = "bench_ahead"
  local path = dir .. "/" .. name .. ".lua"
  -- The baseline's versions go to a directory nobody watches and `require` does not search: a
  -- save in `dir` would start a compile that the next timed poll could end up waiting for.
  local floor_dir = dir .. "-floor"
  assert(os.execute("mkdir -p " .. floor_dir))
  local floor_path = floor_dir .. "/" .. name .. ".lua"
  local v = gen.versions("a")
  v.edit(path, n)
  require(name)
  local w = assert(hotreload.watch(dir))
  local before = hotreload.stats().compiled_ahead

  hotreload.defaults.replace = false
  local floor, merge, merge_ratio = lib.interleaved({
    v.load_run(floor_path, n),
    { apply, saved(v, path, n) },
  }, runs)
  hotreload.defaults.replace = nil

  local heap = gen.heap(quick and 60000 or 600000) -- 2 tables + 1 string per entry
  local walk_runs = quick and 3 or 10
  -- The least any walk must do: read every table of the heap once, here from a Lua loop over
  -- tables laid out in the order they were made. Next to the merge's own figure, it bounds
  -- what the figure with the walk can reach.
  local function touch()
    local sum = 0
    for i = 1, #heap do
      local e = heap[i]
      sum = sum + #e + e[3].x
    end
    return sum
  end
  local floor2, walk, touched, walk_ratio = lib.interleaved({
    v.load_run(floor_path, n),
    { apply, saved(v, path, n) },
    { touch },
  }, walk_runs)
  local objects = #heap * 3
  heap = nil -- luacheck: ignore
  lib.collect()
  assert(hotreload.stats().compiled_ahead - before == runs + walk_runs,
    "every timed poll used the chunk compiled ahead")

  local ahead = latency(v, path, n, runs)
  w:close()
  w = assert(hotreload.watch(dir, { compile_ahead = false }))
  local here = latency(v, path, n, runs)
  w:close()
  lib.remove_tree(dir)
  lib.remove_tree(floor_dir)
  local ms = 1e3
  return {
    { figure = ("poll of %d functions compiled ahead, merge only, vs loadfile+run"):format(n),
      value = merge * ms, baseline = floor * ms, ratio = merge_ratio(2, 1), unit = "ms",
      target = lib.flavor == "luajit" and 0.5 or 0.6 },
    { figure = ("poll of %d functions compiled ahead, walk over %dk objects, vs loadfile+run")
        :format(n, math.floor(objects / 1000)),
      value = walk * ms, baseline = floor2 * ms, ratio = walk_ratio(2, 1), unit = "ms",
      target = lib.flavor == "luajit" and 0.5 or 0.6 },
    { figure = ("one read of each of the heap's %dk tables (a Lua loop), vs loadfile+run")
        :format(math.floor(objects / 1500)),
      value = touched * ms, baseline = floor2 * ms, ratio = walk_ratio(3, 1), unit = "ms" },
    { figure = ("save to visible, %d functions, compiled ahead vs on the Lua thread"):format(n),
      value = ahead, baseline = here, unit = "ms" },
  }
end
