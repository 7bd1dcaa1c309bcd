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

-- Runs `count` cases from the first seed; `case(seed)` gives the module name and the `write`
-- and `reload` functions `fuzz.run` takes. Stops at the third failure and reports them.
local function run_cases(count, case)
  local failures = {}
  for seed = first, first + count - 1 do
    local name, save, reload = case(seed)
    local ok, message = fuzz.run(seed, name, save, reload)
    package.loaded[name] = nil
    if not ok then
      failures[#failures + 1] = message
      if #failures == 3 then break end
    end
  end
  assert(#failures == 0, table.concat(failures, "\n\n")
    .. "\nreplay one: HOTRELOAD_FUZZ_SEED=<seed> HOTRELOAD_FUZZ_CASES=1 make test")
end

describe("differential fuzzing", function()
  it(("%d random module pairs follow the merge rules (seeds %d..%d)"):format(
    cases, first, first + cases - 1), function()
    run_cases(cases, function(seed)
      return "fuzz_" .. seed, write, hotreload.reload
    end)
  end)

  -- The same cases again, saved in a watched directory and reloaded by `poll` from the chunk
  -- compiled ahead (`compile_ahead`): the oracle holds either way.
  local polled = math.max(1, math.floor(cases / 3))
  it(("%d of them again, reloaded by poll from files compiled ahead"):format(polled), function()
    local before = hotreload.stats().compiled_ahead
    run_cases(polled, function(seed)
      local dir = "fz" .. seed
      local watcher
      local function save(name, source)
        -- v1 before the watch (it is required at once), v2 under it
        if package.loaded[name] then watcher = assert(hotreload.watch(h.root .. "/" .. dir)) end
        write(dir .. "/" .. name:match("[^.]+$"), source)
      end
      local function reload(name)
        local n, errors = 0, {}
        h.wait_until(function()
          local k, errs = hotreload.poll()
          n = n + k
          for _, e in ipairs(errs or {}) do errors[#errors + 1] = e end
          return n > 0 or #errors > 0
        end)
        watcher:close()
        if n == 0 then return nil, table.concat(errors, "\n") end
        return package.loaded[name]
      end
      return dir .. ".m", save, reload
    end)
    assert.equal(polled, hotreload.stats().compiled_ahead - before, "every reload compiled ahead")
  end)
end)
