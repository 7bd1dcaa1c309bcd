-- Lifecycle hooks (`__unload`, `__reload`), listeners (`on_reload`, `before_reload`), the
-- reload report, reloading from source text, and transactions. Each spec runs under every VM.
local h = require "spec.helpers"
local hotreload = require "hotreload"

teardown(h.cleanup)

-- A scheduler the reloaded modules register timers with (it is never reloaded itself).
local sched_name = h.module([[
  local S = { timers = {}, next_id = 0 }
  function S.every(fn) S.next_id = S.next_id + 1; S.timers[S.next_id] = fn; return S.next_id end
  function S.cancel(id) S.timers[id] = nil end
  function S.count() local n = 0 for _ in pairs(S.timers) do n = n + 1 end return n end
  function S.tick() for _, fn in pairs(S.timers) do fn() end end
  return S
]])

local function timer_module(version, dispose)
  return ([[
    local sched = require %q
    local M = { ticks = 0 }
    local id = sched.every(function() M.ticks = M.ticks + 1; M.last = %q end)
    %s
    return M
  ]]):format(sched_name, version, dispose and "function M.__unload() sched.cancel(id) end" or "")
end

describe("lifecycle hooks", function()
  it("__unload disposes of what the old top level set up: no timer piles up in 10 reloads", function()
    local sched = require(sched_name)
    local before = sched.count() -- timers other specs left
    local name = h.module(timer_module("v0", true))
    local M = require(name)
    sched.tick()
    for i = 1, 10 do
      h.rewrite(name, timer_module("v" .. i, true))
      assert(hotreload.reload(name))
      sched.tick()
    end
    assert.equal(before + 1, sched.count())
    assert.equal("v10", M.last)
    assert.equal(11, M.ticks) -- one tick per frame, state kept
  end)

  -- what __unload does to the old module is its clean-up, not runtime state: the merge
  -- sees the module as the hook left it, so the new handle the top level made is kept
  it("__unload that disposes of a handle and clears its field keeps the new handle", function()
    local sched = require(sched_name)
    local before = sched.count()
    local src = [[
      local sched = require %q
      local M = { ticks = 0 }
      M.timer = { id = sched.every(function() M.ticks = M.ticks + 1 end), version = %d }
      function M.__unload(m) sched.cancel(m.timer.id) m.timer = nil end
      return M
    ]]
    local name = h.module(src:format(sched_name, 0))
    local M = require(name)
    for i = 1, 10 do
      h.rewrite(name, src:format(sched_name, i))
      assert(hotreload.reload(name))
    end
    assert.equal(before + 1, sched.count())
    assert.equal(10, M.timer.version)
    assert.equal(sched.next_id, M.timer.id, "the newest handle")
    assert.is_function(sched.timers[M.timer.id])
    sched.cancel(M.timer.id)
  end)

  it("without __unload the same module piles up timers (what the hook is for)", function()
    local sched = require(sched_name)
    local before = sched.count()
    local name = h.module(timer_module("v0", false))
    require(name)
    for i = 1, 10 do
      h.rewrite(name, timer_module("v" .. i, false))
      assert(hotreload.reload(name))
    end
    assert.equal(before + 11, sched.count())
  end)

  it("__reload runs on the merged module, which has the new code and the old state", function()
    local src = [[
      local M = { count = 0 }
      function M.version() return "%s" end
      function M.__reload(m) M.seen = { count = m.count, version = m.version(), arg = m } end
      return M
    ]]
    local name = h.module(src:format("v1"))
    local M = require(name)
    M.count = 5
    assert.is_nil(M.seen) -- not on the first load
    h.rewrite(name, src:format("v2"))
    assert(hotreload.reload(name))
    assert.same({ count = 5, version = "v2", arg = M }, M.seen)
    assert.equal(M, M.seen.arg)
  end)

  it("a __reload that raises rolls the merge back and reports it", function()
    local v1 = [[
      local M = { keep = 1, gone = true }
      local speed = 1
      function M.speed() return speed end
      function M.version() return "v1" end
      return M
    ]]
    local v2 = [[
      local M = { keep = 1, added = true }
      local speed = 2
      NEW_GLOBAL_FROM_V2 = true
      function M.speed() return speed end
      function M.version() return "v2" end
      function M.__reload() error("setup failed") end
      return M
    ]]
    local name = h.module(v1)
    local M = require(name)
    local version = M.version
    h.rewrite(name, v2)
    local ok, err = hotreload.reload(name)
    assert.is_nil(ok)
    assert.matches(name, err, 1, true)
    assert.matches("__reload", err, 1, true)
    assert.matches("setup failed", err, 1, true)
    assert.equal(M, package.loaded[name])
    assert.equal("v1", M.version())
    assert.equal(version, M.version)
    assert.equal(1, M.speed())
    assert.is_true(M.gone)
    assert.is_nil(M.added)
    assert.is_nil(M.__reload)
    assert.is_nil(rawget(_G, "NEW_GLOBAL_FROM_V2"))
    -- fixed, it reloads
    h.rewrite(name, (v2:gsub("error%b()", "")))
    assert(hotreload.reload(name))
    assert.equal("v2", M.version())
    assert.equal(2, M.speed())
    NEW_GLOBAL_FROM_V2 = nil -- luacheck: ignore
  end)

  -- (a reload only keeps an undo log where a __reload can run: these two have none in the new
  -- source, and must be rolled back all the same) `src` formats with a number and a version;
  -- `setup` gets the loaded module before the reload.
  local function expect_rollback(src, message, setup)
    local name = h.module(src:format(1, "v1"))
    local M = require(name)
    local version = M.version
    if setup then setup(M) end
    h.rewrite(name, src:format(2, "v2"))
    local ok, err = hotreload.reload(name)
    assert.is_nil(ok)
    assert.matches(message, err, 1, true)
    assert.equal("v1", M.version())
    assert.equal(version, M.version)
    assert.equal(1, M.n)
  end

  it("a __reload the running module got at run time rolls the merge back when it raises", function()
    expect_rollback([[
      local M = { n = %d }
      function M.version() return "%s" end
      return M
    ]], "runtime hook failed", function(M)
      M.__reload = function() error("runtime hook failed") end
    end)
  end)

  it("a __reload an __unload hook installs rolls the merge back when it raises", function()
    expect_rollback([[
      local M = { n = %d }
      function M.version() return "%s" end
      function M.__unload(m) m.__reload = function() error("installed hook failed") end end
      return M
    ]], "installed hook failed")
  end)

  it("an __unload that raises stops the reload before anything is merged", function()
    local src = [[
      local M = {}
      function M.version() return "%s" end
      function M.__unload() %s end
      return M
    ]]
    local name = h.module(src:format("v1", "error({ code = 7 })"))
    local M = require(name)
    h.rewrite(name, src:format("v2", ""))
    local ok, err = hotreload.reload(name)
    assert.is_nil(ok)
    assert.matches("__unload", err, 1, true)
    assert.matches("error object is a table", err, 1, true)
    assert.equal("v1", M.version())
  end)

  it("__unload returning false vetoes the reload", function()
    local src = [[
      local M = { busy = true }
      function M.version() return "%s" end
      function M.__unload(m) return not m.busy end
      return M
    ]]
    local name = h.module(src:format("v1"))
    local M = require(name)
    h.rewrite(name, src:format("v2"))
    local ok, err = hotreload.reload(name)
    assert.is_nil(ok)
    assert.matches("refused by its __unload hook", err, 1, true)
    assert.equal("v1", M.version())
    M.busy = false
    assert(hotreload.reload(name))
    assert.equal("v2", M.version())
  end)

  it("hooks are not called on a first load, even through reload", function()
    local name = "first_load_" .. tostring(math.random(1, 1e9))
    local m = assert(hotreload.reload(name, { source = [[
      local M = {}
      function M.__reload() FIRST_LOAD_HOOK = true end
      function M.__unload() FIRST_LOAD_HOOK = true end
      return M
    ]] }))
    assert.is_table(m)
    assert.is_nil(rawget(_G, "FIRST_LOAD_HOOK"))
  end)

  it("hooks are not called when the new version fails to load", function()
    local name = h.module([[
      local M = {}
      function M.__unload() UNLOAD_CALLED = true end
      return M
    ]])
    require(name)
    h.rewrite(name, "local M = {} error('broken') return M")
    assert.is_nil((hotreload.reload(name)))
    assert.is_nil(rawget(_G, "UNLOAD_CALLED"))
  end)
end)

describe("listeners", function()
  it("on_reload receives name, module and report; its remover stops it", function()
    local name = h.module("return { f = function() return 1 end }")
    local M = require(name)
    local calls = {}
    local remove = hotreload.on_reload(function(...) calls[#calls + 1] = { ... } end)
    h.rewrite(name, "return { f = function() return 2 end }")
    local m, report = hotreload.reload(name)
    assert.equal(M, m)
    assert.equal(1, #calls)
    assert.equal(name, calls[1][1])
    assert.equal(M, calls[1][2])
    assert.equal(report, calls[1][3])
    assert.equal(1, report.functions_replaced)
    assert.is_true(remove())
    assert.is_false(remove())
    assert(hotreload.reload(name))
    assert.equal(1, #calls)
  end)

  it("an on_reload listener that raises does not undo the reload; the report says so", function()
    local name = h.module("return { v = 1 }")
    local M = require(name)
    local remove = hotreload.on_reload(function() error("listener bug") end)
    h.rewrite(name, "return { v = 2 }")
    local m, report = hotreload.reload(name)
    remove()
    assert.equal(M, m)
    assert.equal(2, M.v)
    assert.equal(1, #report.errors)
    assert.matches("listener bug", report.errors[1], 1, true)
  end)

  it("before_reload returning false vetoes; the module stays as it was", function()
    local name = h.module("return { v = 1 }")
    local M = require(name)
    local seen
    local remove = hotreload.before_reload(function(n, old, new)
      seen = { n, old, new.v }
      return false
    end)
    h.rewrite(name, "return { v = 2 }")
    local ok, err = hotreload.reload(name)
    assert.is_nil(ok)
    assert.matches("refused by a before_reload listener", err, 1, true)
    assert.same({ name, M, 2 }, seen)
    assert.equal(1, M.v)
    remove()
    assert(hotreload.reload(name))
    assert.equal(2, M.v)
  end)

  it("what a before_reload listener changes in the new version is part of it", function()
    local name = h.module("return { v = 1, keep = 'a' }")
    local M = require(name)
    local remove = hotreload.before_reload(function(_, _, new)
      new.v = new.v * 10
      new.added = "by the listener"
    end)
    finally(remove)
    h.rewrite(name, "return { v = 2, keep = 'a' }")
    assert(hotreload.reload(name))
    assert.equal(20, M.v)
    assert.equal("by the listener", M.added)
    assert.equal("a", M.keep)
  end)

  it("a before_reload listener that raises fails the reload", function()
    local name = h.module("return { v = 1 }")
    local M = require(name)
    local remove = hotreload.before_reload(function() error("no reloads today") end)
    h.rewrite(name, "return { v = 2 }")
    local ok, err = hotreload.reload(name)
    remove()
    assert.is_nil(ok)
    assert.matches("no reloads today", err, 1, true)
    assert.equal(1, M.v)
  end)

  -- a file that sets the program up once (LÖVE's main.lua) must never run again: refused
  -- before anything is loaded, so its top level does not run
  it("pin refuses a module before loading it, with its reason; unpin lets it reload", function()
    local counter = { runs = 0 }
    rawset(_G, "PIN_COUNTER", counter)
    finally(function() rawset(_G, "PIN_COUNTER", nil) end)
    local src = "PIN_COUNTER.runs = PIN_COUNTER.runs + 1 return { v = %d }"
    local name = h.module(src:format(1))
    local M = require(name)
    local unpin = hotreload.pin(name, "it sets the game up once: restart the game")
    h.rewrite(name, src:format(2))
    local ok, err = hotreload.reload(name)
    assert.is_nil(ok)
    assert.equal("hotreload: cannot reload '" .. name .. "': it sets the game up once: restart "
      .. "the game", err)
    ok = hotreload.reload(name, { source = src:format(3) })
    assert.is_nil(ok)
    assert.equal(1, counter.runs, "the new top level ran")
    assert.equal(1, M.v)
    assert.is_true(unpin())
    assert.is_false(unpin())
    assert(hotreload.reload(name))
    assert.equal(2, counter.runs)
    assert.equal(2, M.v)
    assert.has_error(function() hotreload.pin(42) end)
    assert.has_error(function() hotreload.pin(name, 42) end)
  end)

  it("listeners must be functions", function()
    assert.has_error(function() hotreload.on_reload("f") end)
    assert.has_error(function() hotreload.before_reload() end)
  end)

  it("a reload of a module from inside its own reload says which step it came from", function()
    local name = h.module("return { v = 1 }")
    local M = require(name)
    local inner
    local remove = hotreload.on_reload(function(n)
      if n == name then inner = select(2, hotreload.reload(name)) end
    end)
    assert(hotreload.reload(name, { source = "return { v = 2 }" }))
    remove()
    assert.matches("already being reloaded (the call came from inside that reload, while its " ..
      "on_reload listeners ran)", inner, 1, true)
    M.__unload = function() inner = select(2, hotreload.reload(name)) end
    assert(hotreload.reload(name, { source = "return { v = 3 }" }))
    assert.matches("while its before_reload listeners or its __unload hook ran", inner, 1, true)
    assert.equal(3, M.v)
  end)

  it("poll calls on_reload and reports listener errors in its error list", function()
    local dir = h.root .. "/listened"
    h.write("listened/lmod.lua", "return { v = 1 }")
    local M = require "listened.lmod"
    local w = assert(hotreload.watch(dir))
    local names = {}
    local remove = hotreload.on_reload(function(n, m, r)
      names[#names + 1] = n
      assert(m == M and r.values_taken == 1)
      error("noisy listener")
    end)
    h.write("listened/lmod.lua", "return { v = 2 }")
    local n, errors
    assert(h.wait_until(function()
      n, errors = hotreload.poll()
      return n > 0
    end))
    remove()
    w:close()
    assert.equal(1, n)
    assert.same({ "listened.lmod" }, names)
    assert.equal(1, #errors)
    assert.matches("noisy listener", errors[1], 1, true)
    assert.equal(2, M.v)
  end)
end)

describe("the collector during a reload", function()
  -- LuaJIT 2.0 cannot tell whether the collector runs
  local with_isrunning = pcall(collectgarbage, "isrunning") and it or pending

  with_isrunning("hooks and listeners run with the collector as the program left it", function()
    local name = h.module("return { v = 1 }")
    require(name)
    local seen = {}
    local function note(where) seen[#seen + 1] = where .. "=" .. tostring(collectgarbage("isrunning")) end
    local remove = hotreload.before_reload(function() note("before") end)
    finally(remove)
    local src = [[
      local M = { v = %d }
      function M.__unload() NOTE("unload") end
      function M.__reload() NOTE("reload") end
      return M
    ]]
    rawset(_G, "NOTE", note)
    h.rewrite(name, src:format(2))
    assert(hotreload.reload(name)) -- the first version has no __unload
    h.rewrite(name, src:format(3))
    assert(hotreload.reload(name))
    collectgarbage("stop")
    local ok, err = pcall(hotreload.reload, name)
    local still_stopped = not collectgarbage("isrunning")
    collectgarbage("restart")
    rawset(_G, "NOTE", nil)
    assert(ok, err)
    assert.is_true(still_stopped)
    assert.same({ "before=true", "reload=true", "before=true", "unload=true", "reload=true",
      "before=false", "unload=false", "reload=false" }, seen)
    assert.is_true(collectgarbage("isrunning"))
  end)

  with_isrunning("a hook that stops the collector leaves it stopped", function()
    local src = "return { v = %d, __reload = function() collectgarbage('stop') end }"
    local name = h.module(src:format(1))
    require(name)
    h.rewrite(name, src:format(2))
    local ok, err = pcall(hotreload.reload, name)
    local running = collectgarbage("isrunning")
    collectgarbage("restart")
    assert(ok, err)
    assert.is_false(running)
  end)

  -- Stopping and restarting the collector would make it due at once (5.3 and 5.4 reset its
  -- debt), so each reload would start a collection the program's pace had not asked for.
  -- LuaJIT and Lua 5.5 (whose step takes no negative size) have no way to keep the pace:
  -- they resume due (README, Limitations).
  local pace = (rawget(_G, "jit") or _VERSION == "Lua 5.5") and pending or it
  pace("a reload leaves the collector's pace as it was (Lua 5.3, 5.4)", function()
    local mode = _VERSION == "Lua 5.4" and collectgarbage("incremental")
    -- the next cycle starts when the heap has grown tenfold, and then finishes quickly
    local pause, stepmul = collectgarbage("setpause", 1000), collectgarbage("setstepmul", 400)
    finally(function()
      collectgarbage("setpause", pause)
      collectgarbage("setstepmul", stepmul)
      if mode == "generational" then collectgarbage("generational") end
    end)
    local src = "return { f = function() return %d end }"
    local name = h.module(src:format(1))
    require(name)
    h.rewrite(name, src:format(2))
    collectgarbage()
    collectgarbage()
    local finalized = false
    setmetatable({}, { __gc = function() finalized = true end })
    local heap = collectgarbage("count")
    assert(hotreload.reload(name))
    -- grow the heap to three times its size: a due collector would finish a cycle meanwhile
    local junk = {}
    while collectgarbage("count") < 3 * heap do junk[#junk + 1] = {} end
    assert.is_false(finalized)
    assert.is_true(#junk > 0)
    collectgarbage()
    assert.is_true(finalized) -- (the finalizer does run once a cycle ends)
  end)
end)

describe("the reload report", function()
  it("counts a known change", function()
    local name = h.module([[
      local M = {}
      local hits = 0
      M.speed = 1
      M.name = "a"
      function M.hit() hits = hits + 1 return hits end
      function M.old() return "old" end
      return M
    ]])
    local M = require(name)
    M.name = "changed at run time"
    M.hit()
    local holder = { M.hit }
    h.rewrite(name, [[
      local M = {}
      local hits = 0
      M.speed = 2
      M.name = "b"
      function M.hit() hits = hits + 1 return hits * 10 end
      function M.new() return "new" end
      return M
    ]])
    local m, report = hotreload.reload(name)
    assert.equal(M, m)
    assert.is_number(report.seconds)
    assert.is_true(report.seconds >= 0)
    report.seconds = nil
    assert.same({
      functions_replaced = 1, -- hit
      functions_added = 1, -- new
      functions_kept = 0,
      keys_removed = 1, -- old
      upvalues_joined = 1, -- hits
      values_taken = 2, -- speed, name: edited in the source (rule 5)
      values_kept = 1, -- hits: not edited in the source, state kept
      references_replaced = 1, -- holder[1]
      closures_updated = 0,
      closures_left = 0,
    }, report)
    assert.equal(20, holder[1]())
  end)
end)

describe("reloading from source text", function()
  it("applies every merge rule to the given source", function()
    local name = h.module([[
      local M = { score = 0 }
      local n = 0
      function M.add() n = n + 1 M.score = M.score + 1 return n end
      return M
    ]])
    local M = require(name)
    M.add()
    M.add()
    local m = assert(hotreload.reload(name, { source = [[
      local M = { score = 0 }
      local n = 0
      function M.add() n = n + 1 M.score = M.score + 10 return n * 100 end
      return M
    ]] }))
    assert.equal(M, m)
    assert.equal(300, M.add())
    assert.equal(12, M.score)
  end)

  it("loads a module that has no file", function()
    local name = "patched_only_" .. tostring(math.random(1, 1e9))
    local m = assert(hotreload.reload(name, { source = "return { v = 1 }" }))
    assert.equal(m, package.loaded[name])
    assert.equal(1, m.v)
  end)

  it("names the chunk in error messages", function()
    local name = h.module("return {}")
    require(name)
    local ok, err = hotreload.reload(name, { source = "return {\n  x = = 1 }" })
    assert.is_nil(ok)
    assert.matches(name .. ":2:", err, 1, true)
    ok, err = hotreload.reload(name, { source = "\nerror('boom')", chunkname = "@patches/x.lua" })
    assert.is_nil(ok)
    assert.matches("patches/x.lua:2: boom", err, 1, true)
  end)

  it("refuses bytecode unless { binary = true }", function()
    local name = h.module("return { v = 1 }")
    local M = require(name)
    local bytecode = string.dump(assert((loadstring or load)("return { v = 2 }")))
    local ok, err = hotreload.reload(name, { source = bytecode })
    assert.is_nil(ok)
    assert.matches("bytecode", err, 1, true)
    assert.equal(1, M.v)
    assert(hotreload.reload(name, { source = bytecode, binary = true }))
    assert.equal(2, M.v)
  end)

  it("raises on a source or chunk name of the wrong type", function()
    local name = h.module("return {}")
    assert.has_error(function() hotreload.reload(name, { source = 5 }) end)
    assert.has_error(function() hotreload.reload(name, { source = "return {}", chunkname = 5 }) end)
    assert.has_error(function() hotreload.reload({ name }, { source = "return {}" }) end)
    assert.has_error(function() hotreload.reload(name, { binary = "yes" }) end)
  end)
end)

describe("transactions", function()
  -- a batch keeps its modules' values off the Lua stack, which LuaJIT limits to about 8000
  -- slots per C function: any number of modules fits
  local function batch(n, prefix)
    local names, sources = {}, {}
    for i = 1, n do
      local name = prefix .. i
      names[i] = name
      sources[name] = ("local M = { i = %d } function M.f() return %d end return M"):format(i, i)
      package.loaded[name] = nil
    end
    return names, sources
  end

  it("reloads 10000 modules in one transaction", function()
    local names, sources = batch(10000, "batch10000_")
    assert(hotreload.reload(names, { source = sources }))
    sources[names[10000]] = "local M = { i = 0 } function M.f() return -1 end return M"
    local modules, reports = assert(hotreload.reload(names, { source = sources }))
    assert.equal(10000, #modules)
    assert.equal(-1, modules[10000].f())
    assert.equal(1, reports[1].functions_replaced)
    for _, name in ipairs(names) do package.loaded[name] = nil end
  end)

  local src = [[
    local M = { state = 0 }
    function M.version() %s return "%s" end
    return M
  ]]

  local function three()
    local names, mods = {}, {}
    for i = 1, 3 do
      names[i] = h.module(src:format("", "v1"))
      mods[i] = require(names[i])
      mods[i].state = i
    end
    return names, mods
  end

  it("a 3-module transaction whose third module fails leaves all three untouched", function()
    local names, mods = three()
    h.rewrite(names[1], src:format("", "v2"))
    h.rewrite(names[2], src:format("", "v2"))
    h.rewrite(names[3], "local M = {}\nerror('third is broken')\nreturn M")
    local ok, err = hotreload.reload(names)
    assert.is_nil(ok)
    assert.matches(names[3], err, 1, true)
    assert.matches("third is broken", err, 1, true)
    assert.matches("no module was reloaded", err, 1, true)
    for i = 1, 3 do
      assert.equal("v1", mods[i].version())
      assert.equal(mods[i], package.loaded[names[i]])
    end
    -- fixed, all three reload together
    h.rewrite(names[3], src:format("", "v2"))
    local modules, reports = hotreload.reload(names)
    for i = 1, 3 do
      assert.equal(mods[i], modules[i])
      assert.equal(1, reports[i].functions_replaced)
      assert.equal("v2", mods[i].version())
      assert.equal(i, mods[i].state)
    end
  end)

  it("a failing __reload in a transaction rolls back the modules already merged", function()
    local names, mods = three()
    h.rewrite(names[1], src:format("", "v2"))
    h.rewrite(names[2], src:format("", "v2"))
    h.rewrite(names[3], [[
      local M = { state = 0 }
      function M.version() return "v2" end
      function M.__reload() error("late failure") end
      return M
    ]])
    local ok, err = hotreload.reload(names)
    assert.is_nil(ok)
    assert.matches("late failure", err, 1, true)
    for i = 1, 3 do
      assert.equal("v1", mods[i].version())
      assert.equal(i, mods[i].state)
    end
  end)

  it("checks every name before reloading any", function()
    local names, mods = three()
    h.rewrite(names[1], src:format("", "v2"))
    assert.has_error(function() hotreload.reload({ names[1], 42 }) end)
    assert.equal("v1", mods[1].version(), "reloaded before the bad name raised")
    local modules, reports = hotreload.reload({})
    assert.same({}, modules)
    assert.same({}, reports)
  end)
end)
