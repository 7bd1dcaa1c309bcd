-- Figure: save-to-visible latency. For each sample the bench saves a watched module (in
-- place, or written to a temporary file renamed over it), starts the clock when the write
-- returns, and polls in a tight loop until the module answers with the new value.
local lib = require "bench.lib"
local hotreload = require "hotreload"

local SAMPLES = 60

local function source(i)
  return ("return { v = %d }\n"):format(i)
end

local function measure(dir, name, save)
  local path = dir .. "/" .. name .. ".lua"
  lib.write(path, source(0))
  local M = require(name)
  local times = {}
  for i = 1, SAMPLES do
    save(path, source(i))
    local t0 = lib.now()
    local deadline = t0 + 5
    repeat hotreload.poll() until M.v == i or lib.now() > deadline
    assert(M.v == i, "no reload within 5 s")
    times[i] = (lib.now() - t0) * 1e3
  end
  return times
end

return function()
  local dir = lib.scratch()
  local w = assert(hotreload.watch(dir))
  local in_place = measure(dir, "lat_inplace", lib.write)
  local renamed = measure(dir, "lat_rename", function(path, text)
    lib.write(path .. ".tmp~", text)
    assert(os.rename(path .. ".tmp~", path))
  end)
  w:close()
  lib.remove_tree(dir)
  local rows = {}
  for _, case in ipairs({ { "in-place save", in_place }, { "rename save", renamed } }) do
    rows[#rows + 1] = { figure = "save to visible, " .. case[1] .. " (median)",
      value = lib.median(case[2]), unit = "ms", target = 5, absolute = true }
    rows[#rows + 1] = { figure = "save to visible, " .. case[1] .. " (p95)",
      value = lib.percentile(case[2], 0.95), unit = "ms" }
  end
  return rows
end
