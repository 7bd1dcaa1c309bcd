-- Runs the benchmarks named on the command line (default: all) under the interpreter that
-- runs this script, and prints one Markdown table row per figure. Every ratio is against a
-- baseline measured in the same process and run: `ratio` if the row gives it (the median
-- of the per-round ratios, see lib.interleaved), else value ÷ baseline.
--   lua5.4 bench/run.lua [idle] [latency] ...
package.path = "./?.lua;" .. package.path
local lib = require "bench.lib"

local ALL = { "idle", "latency", "reload", "ahead", "memory", "scaling", "batch" }
local names = #arg > 0 and arg or ALL

local function fmt(x)
  if x == nil then return "" end
  if x == 0 then return "0" end
  if math.abs(x) >= 100 then return ("%.0f"):format(x) end
  if math.abs(x) >= 1 then return ("%.2f"):format(x) end
  return ("%.3f"):format(x)
end

for _, name in ipairs(names) do
  local rows = require("bench." .. name)()
  for _, r in ipairs(rows) do
    local ratio, verdict = "", ""
    if r.baseline then
      local q = r.ratio or r.value / r.baseline
      ratio = ("%.2f×"):format(q)
      if r.target then
        verdict = q <= r.target and ("≤ %g× ✓"):format(r.target) or ("> %g× ✗"):format(r.target)
      end
    elseif r.target and r.absolute then
      local ok = r.value <= r.target
      verdict = ("%s %g %s %s"):format(ok and "≤" or ">", r.target, r.unit, ok and "✓" or "✗")
    end
    local base = r.baseline and (fmt(r.baseline) .. " " .. r.unit) or ""
    print(("| %s | %s | %s %s | %s | %s | %s |"):format(
      lib.flavor, r.figure, fmt(r.value), r.unit, base, ratio, verdict))
    io.stdout:flush()
  end
end
