-- The benchmarks run and print every figure (quick sizes; times are never asserted).
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
    }
    for _, figure in ipairs(figures) do
      local row = out:match("\n?(| [^\n]*" .. figure .. "[^\n]*)")
      assert(row, "no row for " .. figure .. " in:\n" .. out)
      assert(row:match("| [%d.]+ %a+ |"), "no value in " .. row)
    end
  end)
end)
