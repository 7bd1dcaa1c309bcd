-- The benchmarks run and print every figure (quick sizes; times are never asserted), and
-- their paired ratio is computed as documented (on a fake clock).
local h = require "spec.helpers"

describe("bench/run.lua", function()
  it("prints a row with a value for every figure", function()
    local cmd = ("HOTRELOAD_BENCH_QUICK=1 %s -e %q bench/run.lua 2>&1"):format(
      h.interpreter, ("package.cpath = %q"):format(package.cpath))
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    local figures = {
      "reload of %d+ functions, merge only, vs loadfile%+run",
      "reload of %d+ functions, merge %+ walk, vs loadfile%+run",
      "naive copy snippet",
      "reload with a heap of %d+k objects vs full GC",
      "idle poll vs rawequal",
      "bytes allocated per idle poll",
      "save to visible, in%-place save %(median%)",
      "save to visible, in%-place save %(p95%)",
      "save to visible, rename save %(median%)",
      "save to visible, rename save %(p95%)",
      "Lua heap after %d+ reloads vs after 10",
      "process RSS after %d+ reloads vs after 10",
      "scaling: reload of 100 functions",
      "scaling: reload of 1000 functions",
      "scaling: reload with 0k heap tables",
      "batch of 100 modules vs single reloads, per module",
      "batch of 1000 modules vs single reloads, per module",
    }
    for _, figure in ipairs(figures) do
      local row = out:match("\n?(| [^\n]*" .. figure .. "[^\n]*)")
      assert(row, "no row for " .. figure .. " in:\n" .. out)
      assert(row:match("| [%d.]+ %a+ |"), "no value in " .. row)
    end
  end)
end)

describe("bench.lib.interleaved", function()
  it("gives each operation's median and the median of the per-round ratios", function()
    local lib = require "bench.lib"
    local clock, now = 0, lib.now
    -- each round: the first operation takes load[r], the second took[r] (a fake clock)
    local load, took, r = { 1, 5, 10 }, { 1.5, 6, 15 }, 0
    lib.now = function() return clock end
    local ok, a, b, ratio = pcall(lib.interleaved, {
      { function() r = r + 1; clock = clock + load[r] end },
      { function() clock = clock + took[r] end },
    }, 3)
    lib.now = now
    assert(ok, a)
    assert.are.equal(5, a)
    assert.are.equal(6, b)
    -- the per-round ratios are 1.5, 1.2, 1.5; the ratio of the medians would be 1.2
    assert.are.equal(1.5, ratio(2, 1))
    assert.are.equal(1 / 1.5, ratio(1, 2))
  end)
end)
