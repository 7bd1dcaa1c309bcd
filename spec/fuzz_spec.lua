-- Differential fuzzing (spec/fuzz.lua): random module pairs, a random workload, a reload, and
-- the rules checked by an oracle. A few hundred cases per run; `make fuzz` runs 10 000 (the
-- scheduled job). A failure prints its seed: HOTRELOAD_FUZZ_SEED=<seed> HOTRELOAD_FUZZ_CASES=1
-- replays it on the same VM.
local h = require "spec.helpers"
local fuzz = require "spec.fuzz"
local hotreload = require "hotreload"

teardown(h.cleanup)

local cases = tonumber(os.getenv("HOTRELOAD_FUZZ_CASES")) or 300
local first = tonumber(os.getenv("HOTRELOAD_FUZZ_SEED")) or os.time() % 1000000 * 1000

local function write(name, source)
  h.write(name .. ".lua", source)
end

describe("differential fuzzing", function()
  it(("%d random module pairs follow the merge rules (seeds %d..%d)"):format(
    cases, first, first + cases - 1), function()
    local failures = {}
    for seed = first, first + cases - 1 do
      local name = "fuzz_" .. seed
      local ok, message = fuzz.run(seed, name, write, hotreload.reload)
      package.loaded[name] = nil
      if not ok then
        failures[#failures + 1] = message
        if #failures == 3 then break end
      end
    end
    assert(#failures == 0, table.concat(failures, "\n\n")
      .. "\nreplay one: HOTRELOAD_FUZZ_SEED=<seed> HOTRELOAD_FUZZ_CASES=1 make test")
  end)
end)
