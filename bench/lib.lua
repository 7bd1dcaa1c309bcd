-- Shared bench helpers: a monotonic clock, medians and percentiles, scratch files.
local system = require "system"

local lib = {}

lib.now = system.monotime
lib.jit = rawget(_G, "jit")
lib.flavor = lib.jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"):gsub("%.", ""))

function lib.median(xs)
  local t = {}
  for i, x in ipairs(xs) do t[i] = x end
  table.sort(t)
  local n = #t
  if n % 2 == 1 then return t[(n + 1) / 2] end
  return (t[n / 2] + t[n / 2 + 1]) / 2
end

function lib.percentile(xs, p)
  local t = {}
  for i, x in ipairs(xs) do t[i] = x end
  table.sort(t)
  return t[math.max(1, math.ceil(#t * p))]
end

--- Times several operations over `runs` rounds, each timed in turn within a round, so that a
--- change in the machine's load hits all of them alike. `ops` is a list of `{ f, prepare }`
--- (`prepare()`, if given, runs untimed before each `f()`). Returns the median time of each
--- operation in seconds, in the order of `ops`, then `ratio(i, j)`: the median over the
--- rounds of operation i's time ÷ operation j's in the same round (a paired comparison: a
--- burst of load that slows one round slows both of its times).
function lib.interleaved(ops, runs)
  local samples = {}
  for i = 1, #ops do samples[i] = {} end
  for r = 1, runs do
    for i, op in ipairs(ops) do
      if op[2] then op[2]() end
      local t0 = lib.now()
      op[1]()
      samples[i][r] = lib.now() - t0
    end
  end
  local results = {}
  for i = 1, #ops do results[i] = lib.median(samples[i]) end
  results[#ops + 1] = function(i, j)
    local ratios = {}
    for r = 1, runs do ratios[r] = samples[i][r] / samples[j][r] end
    return lib.median(ratios)
  end
  return (table.unpack or unpack)(results)
end

--- Calls `f()` with `package.searchers` (`package.loaders` on LuaJIT) as they were before
--- hotreload wrapped them: a `require` inside then loads a module without hotreload recording
--- its base (a wrapper is a C closure whose second upvalue is the searcher it wraps).
function lib.without_capture(f)
  local searchers = package.searchers or package.loaders
  local wrapped = {}
  for i, s in ipairs(searchers) do
    local _, original = debug.getupvalue(s, 2)
    if type(original) == "function" then
      wrapped[i], searchers[i] = s, original
    end
  end
  local ok, err = pcall(f)
  for i, s in pairs(wrapped) do searchers[i] = s end
  assert(ok, err)
end

--- Full collections until the heap settles.
function lib.collect()
  for _ = 1, 3 do collectgarbage("collect") end
end

--- Resident set size of this process, in bytes (Linux), or nil.
function lib.rss()
  local f = io.open("/proc/self/statm", "r")
  if not f then return nil end
  local line = f:read("*l")
  f:close()
  local pages = tonumber(line:match("^%d+%s+(%d+)"))
  return pages and pages * 4096
end

local counter = 0
--- A fresh scratch directory (under $TMPDIR), put on package.path.
function lib.scratch()
  counter = counter + 1
  local dir = ("%s/hotreload-bench-%d-%d"):format(os.getenv("TMPDIR") or "/tmp", os.time(), counter)
  assert(os.execute("mkdir -p " .. dir))
  package.path = dir .. "/?.lua;" .. package.path
  return dir
end

function lib.write(path, text)
  local f = assert(io.open(path, "wb"))
  assert(f:write(text))
  assert(f:close())
end

function lib.remove_tree(dir)
  os.execute("rm -rf " .. dir)
end

return lib
