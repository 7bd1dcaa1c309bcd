-- Differential fuzzing of the merge rules: a generator of random module pairs (v1, v2) and an
-- oracle. A case is a random model (data fields, counters in upvalues, getters sharing their
-- cells, nested tables, classes with instances, a cache table upvalue, functions held
-- elsewhere, deletions and additions); from it come the two sources, a random workload run on
-- v1, and the values every probe must give after the reload to v2:
--   * every function behaves as v2's does given the same state (they return their version),
--   * state the source did not change is kept (counters, runtime data, cache entries),
--   * edited constants apply (data fields, counter initial values), deleted keys go,
--   * identities hold (module, nested tables, classes, old instances).
-- Everything random comes from math.random after math.randomseed(seed): a seed replays a case
-- on the same VM.
local fuzz = {}

local function pick(t) return t[math.random(#t)] end
local function chance(p) return math.random() < p end

local function constant()
  local kind = math.random(4)
  if kind == 1 then return math.random(-50, 50) end
  if kind == 2 then return ("s%d"):format(math.random(0, 99)) end
  if kind == 3 then return chance(0.5) end
  return math.random(0, 1000) / 8
end

--- `a` for version 1, `b` for version 2 (`v == 1 and a or b` is wrong when `a` is false).
local function choose(v, a, b)
  if v == 1 then return a end
  return b
end

local function lit(v)
  if type(v) == "string" then return ("%q"):format(v) end
  return tostring(v)
end

--- A random model.
local function model()
  local m = { data = {}, counters = {}, nested = {}, classes = {}, doomed = {}, added = {} }
  for i = 1, math.random(0, 6) do
    local v1 = constant()
    local fate = pick({ "same", "same", "edit", "delete" })
    local v2 = v1
    if fate == "edit" then v2 = constant() end
    local runtime = nil
    if chance(0.4) then runtime = constant() end
    m.data[i] = { v1 = v1, v2 = v2, fate = fate, runtime = runtime }
  end
  for j = 1, math.random(0, 4) do
    m.counters[j] = {
      init1 = math.random(0, 5), init2 = nil, step1 = math.random(1, 3), step2 = math.random(1, 3),
      getter1 = chance(0.6), getter2 = chance(0.6), calls = math.random(0, 4),
    }
    local c = m.counters[j]
    c.init2 = chance(0.3) and math.random(6, 9) or c.init1
  end
  for k = 1, math.random(0, 3) do
    local x1 = constant()
    local x2 = x1
    if chance(0.4) then x2 = constant() end
    m.nested[k] = { x1 = x1, x2 = x2, runtime = chance(0.3) }
  end
  for c = 1, math.random(0, 2) do
    m.classes[c] = { instances = math.random(0, 3) }
  end
  for d = 1, math.random(0, 2) do m.doomed[d] = true end
  for a = 1, math.random(0, 2) do m.added[a] = constant() end
  m.cache = chance(0.5)
  m.held = chance(0.7)
  m.runtime_keys = math.random(0, 2)
  return m
end

--- The source of version `v` (1 or 2) of model `m`.
local function source(m, v)
  local out = { "local M = {}" }
  local function add(fmt, ...) out[#out + 1] = fmt:format(...) end
  for i, d in ipairs(m.data) do
    if v == 1 or d.fate ~= "delete" then add("M.d%d = %s", i, lit(choose(v, d.v1, d.v2))) end
  end
  for j, c in ipairs(m.counters) do
    add("do")
    add("  local c%d = %d", j, choose(v, c.init1, c.init2))
    add("  function M.inc%d() c%d = c%d + %d return c%d end", j, j, j,
      choose(v, c.step1, c.step2), j)
    if choose(v, c.getter1, c.getter2) then
      add("  function M.get%d() return 'v%d', c%d end", j, v, j)
    end
    add("end")
  end
  for k, n in ipairs(m.nested) do
    add("M.t%d = { x = %s, f = function() return 'v%d:t%d' end }", k, lit(choose(v, n.x1, n.x2)),
      v, k)
  end
  for c in ipairs(m.classes) do
    add("M.C%d = {}", c)
    add("M.C%d.__index = M.C%d", c, c)
    add("function M.C%d.new(n) return setmetatable({ n = n }, M.C%d) end", c, c)
    add("function M.C%d:get() return 'v%d:C%d:' .. self.n end", c, v, c)
  end
  if v == 1 then
    for d in ipairs(m.doomed) do add("function M.old%d() return 'v1:old%d' end", d, d) end
  else
    for a, value in ipairs(m.added) do add("M.new%d = %s", a, lit(value)) end
  end
  if m.cache then
    add("local cache = {}")
    add("function M.put(k, x) cache[k] = x end")
    add("function M.cached(k) return cache[k], 'v%d' end", v)
  end
  add("function M.version() return %d end", v)
  out[#out + 1] = "return M"
  return table.concat(out, "\n")
end

--- Runs the random workload on v1; returns what it must leave behind.
local function workload(m, M)
  local w = { counters = {}, instances = {}, held = {}, keys = {} }
  for i, d in ipairs(m.data) do
    if d.runtime ~= nil then M["d" .. i] = d.runtime end
  end
  for j, c in ipairs(m.counters) do
    for _ = 1, c.calls do M["inc" .. j]() end
    w.counters[j] = c.init1 + c.calls * c.step1
  end
  for k, n in ipairs(m.nested) do
    w["t" .. k] = M["t" .. k]
    if n.runtime then M["t" .. k].rt = k end
  end
  for c, cl in ipairs(m.classes) do
    w["C" .. c] = M["C" .. c]
    w.instances[c] = {}
    for i = 1, cl.instances do w.instances[c][i] = M["C" .. c].new(i) end
  end
  if m.cache then M.put("key", "kept") end
  if m.held then
    w.held.version = M.version
    for j in ipairs(m.counters) do w.held["inc" .. j] = M["inc" .. j] end
  end
  for r = 1, m.runtime_keys do
    M["rt" .. r] = r * 11
    w.keys[r] = r * 11
  end
  return w
end

--- Whether the source changed a constant: `29` -> `29.0` is an edit on 5.3+ (the value is
--- now a float: integer division, `%d` and `math.type` see the difference), though `==`.
local function edited(a, b)
  local mtype = math.type
  return a ~= b or (mtype ~= nil and mtype(a) ~= mtype(b))
end

--- Checks the reloaded module against the rules; returns nil, or a message.
local function check(m, M, w)
  local function expect(what, got, want)
    if got ~= want then
      error(("%s: got %s, want %s"):format(what, tostring(got), tostring(want)), 0)
    end
  end
  for i, d in ipairs(m.data) do
    local want
    if d.fate == "delete" then
      want = nil
    elseif d.fate == "edit" and edited(d.v1, d.v2) then
      want = d.v2 -- edited constant applies
    elseif d.runtime ~= nil then
      want = d.runtime -- runtime state kept
    else
      want = d.v2
    end
    expect("M.d" .. i, M["d" .. i], want)
  end
  for j, c in ipairs(m.counters) do
    local value = c.init2 ~= c.init1 and c.init2 or w.counters[j]
    if c.getter2 then
      local tag, got = M["get" .. j]()
      expect("M.get" .. j .. " version", tag, "v2")
      expect("counter " .. j .. " after reload", got, value)
    else
      expect("M.get" .. j .. " deleted", M["get" .. j], nil)
    end
    expect("M.inc" .. j .. "()", M["inc" .. j](), value + c.step2)
    if c.getter2 then
      expect("counter " .. j .. " cell shared", select(2, M["get" .. j]()), value + c.step2)
    end
    if m.held then
      expect("held inc" .. j .. "()", w.held["inc" .. j](), value + 2 * c.step2)
    end
  end
  for k, n in ipairs(m.nested) do
    expect("M.t" .. k .. " identity", M["t" .. k], w["t" .. k])
    expect("M.t" .. k .. ".x", M["t" .. k].x, n.x2) -- never changed at run time

    expect("M.t" .. k .. ".f()", M["t" .. k].f(), "v2:t" .. k)
    expect("M.t" .. k .. ".rt", M["t" .. k].rt, n.runtime and k or nil)
  end
  for c in ipairs(m.classes) do
    expect("M.C" .. c .. " identity", M["C" .. c], w["C" .. c])
    for i, obj in ipairs(w.instances[c]) do
      expect(("old instance %d of C%d"):format(i, c), obj:get(), ("v2:C%d:%d"):format(c, i))
    end
  end
  for d in ipairs(m.doomed) do expect("M.old" .. d, M["old" .. d], nil) end
  for a, value in ipairs(m.added) do expect("M.new" .. a, M["new" .. a], value) end
  if m.cache then
    local got, tag = M.cached("key")
    expect("cache entry", got, "kept")
    expect("M.cached version", tag, "v2")
  end
  for r, value in ipairs(w.keys) do expect("runtime key rt" .. r, M["rt" .. r], value) end
  expect("M.version()", M.version(), 2)
  if m.held then expect("held M.version()", w.held.version(), 2) end
end

--- Runs case `seed`: writes v1 as module `name` through `write(name, source)`, requires it,
--- runs the workload, writes v2, reloads with `reload(name)`, checks. Returns true, or
--- false and a message with the seed and both sources.
function fuzz.run(seed, name, write, reload)
  math.randomseed(seed)
  local m = model()
  local v1, v2 = source(m, 1), source(m, 2)
  local ok, err = pcall(function()
    write(name, v1)
    local M = require(name)
    local w = workload(m, M)
    write(name, v2)
    local r, message = reload(name)
    if r == nil then error("reload failed: " .. tostring(message), 0) end
    if r ~= M then error("reload returned another value than the module", 0) end
    check(m, M, w)
  end)
  if ok then return true end
  local data = {}
  for i, d in ipairs(m.data) do
    data[i] = ("d%d: %s -> %s (%s), set at run time to %s"):format(i, lit(d.v1), lit(d.v2), d.fate,
      d.runtime == nil and "nothing" or lit(d.runtime))
  end
  return false, ("seed %d: %s\n-- data:\n%s\n-- v1:\n%s\n-- v2:\n%s"):format(seed, tostring(err),
    table.concat(data, "\n"), v1, v2)
end

return fuzz
