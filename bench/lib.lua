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

--- Median over `runs` runs of the time `f()` takes, in seconds.
function lib.time(f, runs)
  local samples = {}
  for i = 1, runs or 7 do
    local t0 = lib.now()
    f()
    samples[i] = lib.now() - t0
  end
  return lib.median(samples)
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
