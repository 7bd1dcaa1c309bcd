-- The merge rules of hotreload.reload, one describe block per rule (README, "How reloading
-- works"). Every spec runs under lua5.4 and luajit against the built hotreload.so.
local h = require "spec.helpers"
local hotreload = h.hotreload()

teardown(h.cleanup)

local function reload(name)
  local m, err = hotreload.reload(name)
  assert(m ~= nil, err)
  return m
end

describe("hotreload module", function()
  it("has a version and a flavour", function()
    assert.is_string(hotreload._VERSION)
    local expected = h.jit and "luajit" or ("lua" .. _VERSION:gsub("Lua 5%.", "5"))
    assert.equal(expected, hotreload.flavor)
  end)

  it("opened again in the same state, shares bases, defaults and listeners", function()
    local name = h.module("local M = { speed = 1, score = 0 } return M")
    local M = require(name)
    M.score = 5
    local saved = package.loaded.hotreload
    package.loaded.hotreload = nil
    local again = require "hotreload"
    package.loaded.hotreload = saved
    assert.are_not.equal(saved, again)
    assert.equal(saved.defaults, again.defaults)
    h.rewrite(name, "local M = { speed = 2, score = 0 } return M")
    assert(again.reload(name))
    assert.equal(2, M.speed) -- the base captured by the first opening applies
    assert.equal(5, M.score)
  end)

  it("raises on a name that is not a string", function()
    assert.has_error(function() hotreload.reload(42) end)
    assert.has_error(function() hotreload.reload() end)
    assert.has_error(function() hotreload.reload({ "a", 42 }) end)
    assert.has_error(function() hotreload.reload(true) end)
  end)

  it("raises on options that are not a table", function()
    local name = h.module("return {}")
    assert.has_error(function() hotreload.reload(name, 5) end)
    assert.is_table(hotreload.reload(name, nil))
    assert.is_table(hotreload.reload(name, {}))
  end)

  it("returns nil and require's message for a missing module", function()
    local m, err = hotreload.reload("no.such.module")
    assert.is_nil(m)
    assert.matches("cannot reload 'no.such.module'", err, 1, true)
    assert.matches("module 'no.such.module' not found", err, 1, true)
  end)

  it("loads a module that is not loaded yet, as require would", function()
    local name = h.module("return { loaded_by = 'reload' }")
    local m = reload(name)
    assert.equal("reload", m.loaded_by)
    assert.equal(m, package.loaded[name])
    assert.equal(m, require(name))
  end)

  it("refuses C modules", function()
    local m, err = hotreload.reload("hotreload") -- (the one C module every host has)
    assert.is_nil(m)
    assert.matches("C module", err, 1, true)
  end)

  it("refuses a top level that reloads its own module", function()
    local name = h.module([[
      local hotreload = require "hotreload"
      local M = { inner = false }
      if _G.RELOAD_SELF then M.inner = { hotreload.reload((...)) } end
      return M
    ]])
    local M = require(name)
    _G.RELOAD_SELF = true
    reload(name)
    _G.RELOAD_SELF = nil
    assert.is_nil(M.inner[1])
    assert.matches("already being reloaded (the call came from inside that reload, while its new "
      .. "top level ran)", M.inner[2], 1, true)
  end)
end)

describe("rule 1: identity", function()
  it("keeps the module, nested tables and metatables; old instances use new methods", function()
    local v = [[
      local M = { sub = { deeper = {} } }
      local Class = {}
      Class.__index = Class
      function Class.new() return setmetatable({}, Class) end
      function Class:speak() return "VERSION" end
      M.Class = Class
      function M.sub.f() return "VERSION" end
      function M.sub.deeper.g() return "VERSION" end
      return setmetatable(M, { __index = function() return "meta VERSION" end })
    ]]
    local name = h.module((v:gsub("VERSION", "v1")))
    local M = require(name)
    local sub, deeper, Class, mt = M.sub, M.sub.deeper, M.Class, getmetatable(M)
    local obj = Class.new()
    local held_f = sub.f -- a reference to the old function (replaced everywhere by issue 3)
    h.rewrite(name, (v:gsub("VERSION", "v2")))

    assert.equal(M, reload(name))
    assert.equal(M, package.loaded[name])
    assert.equal(M, require(name))
    assert.equal(sub, M.sub)
    assert.equal(deeper, M.sub.deeper)
    assert.equal(Class, M.Class)
    assert.equal(mt, getmetatable(M))
    assert.equal("v2", obj:speak())
    assert.equal("v2", sub.f())
    assert.equal("v2", deeper.g())
    assert.equal("meta v2", M.anything)
    assert.is_function(held_f)
  end)

  -- a second name for the module (an alias module, `package.loaded.x = M`) is one more
  -- holder of the same table, not another module's table to leave alone
  it("keeps one module reachable under a second name", function()
    local src = "local M = { n = 0 } function M.f() return '%s' end return M"
    local name = h.module(src:format("v1"))
    local alias = h.module(("return require %q"):format(name))
    local M = require(name)
    assert.equal(M, require(alias))
    package.loaded[name .. ".also"] = M
    M.n = 5
    h.rewrite(name, src:format("v2"))
    local m, report = hotreload.reload(name)
    assert.equal(M, m)
    assert.equal(M, package.loaded[name])
    assert.equal(M, require(alias))
    assert.equal("v2", M.f())
    assert.equal(5, M.n)
    assert.equal(1, report.functions_replaced)
    package.loaded[name .. ".also"] = nil
  end)
end)

describe("rule 2: functions", function()
  it("replaces functions at the same key path and adds new keys", function()
    local name = h.module([[
      local M = { a = { b = {} } }
      function M.top() return 1 end
      function M.a.b.c() return 1 end
      return M
    ]])
    local M = require(name)
    h.rewrite(name, [[
      local M = { a = { b = {} }, fresh = { list = { 1, 2, 3 } } }
      function M.top() return 2 end
      function M.a.b.c() return 2 end
      function M.a.added() return "added" end
      M.n = 42
      return M
    ]])
    reload(name)
    assert.equal(2, M.top())
    assert.equal(2, M.a.b.c())
    assert.equal("added", M.a.added())
    assert.equal(42, M.n)
    assert.same({ 1, 2, 3 }, M.fresh.list)
  end)

  -- Three-way, like data: a function the program put in place of the module's (a mock, a
  -- monkeypatch) is state, unless the source changed the module's function there.
  local patched = [[
    local M = { Class = {} }
    local function helper() return "helper %s" end
    function M.f() return "f %s" end
    function M.g() return "g %s" end
    function M.uses_helper() return helper() end
    function M.make() return function() return "made %s" end end
    M.made = M.make()
    function M.Class.method() return "method %s" end
    return M
  ]]
  local function version(f, g, helper, made, method)
    return patched:format(helper, f, g, made, method)
  end

  it("keeps a mock when the source did not change the function it replaced", function()
    local name = h.module(version("v1", "v1", "v1", "v1", "v1"))
    local M = require(name)
    local function mock() return "mock" end
    local holder = { f = mock }
    M.f, M.made, M.Class.method = mock, mock, mock
    local i = 1
    while debug.getupvalue(M.uses_helper, i) ~= "helper" do i = i + 1 end
    debug.setupvalue(M.uses_helper, i, mock)
    h.rewrite(name, version("v1", "v2", "v1", "v1", "v1")) -- an unrelated edit
    local _, report = hotreload.reload(name)
    assert.equal("mock", M.f())
    assert.equal("mock", M.made())
    assert.equal("mock", M.Class.method())
    assert.equal("mock", M.uses_helper())
    assert.equal("g v2", M.g())
    assert.equal(4, report.functions_kept)
    -- the program's own function is never rewritten, wherever it is held
    assert.equal(mock, holder.f)
    assert.equal("mock", mock())
  end)

  it("replaces a mock when the source changed the function it replaced", function()
    local name = h.module(version("v1", "v1", "v1", "v1", "v1"))
    local M = require(name)
    local function mock() return "mock" end
    local holder = { f = mock }
    M.f, M.made, M.Class.method = mock, mock, mock
    local i = 1
    while debug.getupvalue(M.uses_helper, i) ~= "helper" do i = i + 1 end
    debug.setupvalue(M.uses_helper, i, mock)
    h.rewrite(name, version("v2", "v1", "v2", "v2", "v2"))
    local _, report = hotreload.reload(name)
    assert.equal("f v2", M.f())
    assert.equal("made v2", M.made())
    assert.equal("method v2", M.Class.method())
    assert.equal("helper v2", M.uses_helper())
    assert.equal(0, report.functions_kept)
    assert.equal(mock, holder.f)
    assert.equal("mock", mock())
  end)

  it("keeps every mock through a neutral edit that moves every line", function()
    local name = h.module(version("v1", "v1", "v1", "v1", "v1"))
    local M = require(name)
    local function mock() return "mock" end
    M.f, M.Class.method = mock, mock
    h.rewrite(name, "-- a comment\n\n\n" .. version("v1", "v1", "v1", "v1", "v1"))
    local _, report = hotreload.reload(name)
    assert.equal("mock", M.f())
    assert.equal("mock", M.Class.method())
    assert.equal(2, report.functions_kept)
    -- and the next reload still knows the mock is the program's
    h.rewrite(name, version("v1", "v3", "v1", "v1", "v1"))
    assert(hotreload.reload(name))
    assert.equal("mock", M.f())
    assert.equal("g v3", M.g())
  end)
end)

describe("rule 3: upvalues keep state", function()
  it("keeps counters and caches", function()
    local v = [[
      local M = {}
      local count, cache = 0, {}
      function M.hit(k) count = count + STEP; cache[k] = true; return count end
      function M.cached(k) return cache[k] == true end
      return M
    ]]
    local name = h.module((v:gsub("STEP", "1")))
    local M = require(name)
    M.hit("a"); M.hit("b")
    h.rewrite(name, (v:gsub("STEP", "100")))
    reload(name)
    assert.equal(102, M.hit("c"))
    assert.is_true(M.cached("a"))
  end)

  it("keeps a cell shared by several functions shared by their new versions", function()
    local v = [[
      local M = {}
      local n = 0
      function M.inc() n = n + 1 end
      function M.get() return n TAIL end
      return M
    ]]
    local name = h.module((v:gsub("TAIL", "")))
    local M = require(name)
    M.inc(); M.inc()
    h.rewrite(name, (v:gsub("TAIL", "+ 0")))
    reload(name)
    assert.equal(2, M.get())
    M.inc()
    assert.equal(3, M.get())
  end)

  it("joins new functions that capture an existing local", function()
    local name = h.module([[
      local M = {}
      local n = 0
      function M.inc() n = n + 1 end
      return M
    ]])
    local M = require(name)
    M.inc(); M.inc(); M.inc()
    h.rewrite(name, [[
      local M = {}
      local n = 0
      function M.inc() n = n + 1 end
      function M.peek() return n end
      return M
    ]])
    reload(name)
    assert.equal(3, M.peek())
    M.inc()
    assert.equal(4, M.peek())
  end)

  it("keeps same-named locals of different do blocks apart", function()
    local v = [[
      local M = {}
      do local n = 0; function M.a() n = n + STEP; return n end end
      do local n = 0; function M.b() n = n + STEP; return n end end
      return M
    ]]
    local name = h.module((v:gsub("STEP", "1")))
    local M = require(name)
    M.a(); M.a(); M.a()
    M.b()
    h.rewrite(name, (v:gsub("STEP", "10")))
    reload(name)
    assert.equal(13, M.a())
    assert.equal(11, M.b())
  end)

  it("keeps the cells of different loop iterations apart", function()
    local v = [[
      local M = {}
      for i = 1, 3 do
        local count = 0
        M["f" .. i] = function() count = count + i * SCALE; return count end
      end
      return M
    ]]
    local name = h.module((v:gsub("SCALE", "1")))
    local M = require(name)
    M.f1(); M.f1()
    M.f2()
    h.rewrite(name, (v:gsub("SCALE", "10")))
    reload(name)
    assert.equal(12, M.f1())
    assert.equal(22, M.f2())
    assert.equal(30, M.f3())
  end)

  it("does not refuse a module because upvalues share a name", function()
    local v = [[
      local M = {}
      local x = 1
      local function get_outer() return x end
      function M.set_outer(v) x = v end
      local x = 2 -- luacheck: ignore (shadowing on purpose)
      function M.set_inner(v) x = v end
      function M.both() return get_outer() * 1000 + x + BONUS end
      return M
    ]]
    local name = h.module((v:gsub("BONUS", "0")))
    local M = require(name)
    M.set_outer(5)
    M.set_inner(7)
    assert.equal(5007, M.both())
    h.rewrite(name, (v:gsub("BONUS", "100")))
    reload(name)
    assert.equal(5107, M.both())
  end)
end)

describe("rule 4: local helpers take the new code", function()
  it("uses the new helper and migrates the helper's own upvalues", function()
    local v = [[
      local M = {}
      local calls = 0
      local function helper() calls = calls + 1; return "VERSION", calls end
      function M.run() return helper() end
      return M
    ]]
    local name = h.module((v:gsub("VERSION", "v1")))
    local M = require(name)
    M.run(); M.run()
    h.rewrite(name, (v:gsub("VERSION", "v2")))
    reload(name)
    local tag, calls = M.run()
    assert.equal("v2", tag)
    assert.equal(3, calls)
  end)

  it("keeps a table upvalue and merges it like a module table", function()
    local v = [[
      local M = {}
      local handlers = { count = 0 }
      function handlers.greet() return "hello VERSION" end
      ADDED
      function M.dispatch(what) handlers.count = handlers.count + 1; return handlers[what]() end
      function M.handlers() return handlers end
      return M
    ]]
    local name = h.module((v:gsub("VERSION", "v1"):gsub("ADDED", "")))
    local M = require(name)
    local handlers = M.handlers()
    M.dispatch("greet")
    h.rewrite(name, (v:gsub("VERSION", "v2"):gsub("ADDED", "function handlers.bye() return 'bye' end")))
    reload(name)
    assert.equal(handlers, M.handlers())
    assert.equal("hello v2", M.dispatch("greet"))
    assert.equal("bye", M.dispatch("bye"))
    assert.equal(3, handlers.count)
  end)
end)

describe("rule 5: three-way merge of data", function()
  local v1 = [[
    local M = { speed = 5, name = "hero", score = 0, gone = "x", nested = { hp = 100, max = 100 } }
    local level = 1
    local step = 2
    function M.level() return level end
    function M.up() level = level + step end
    return M
  ]]

  it("applies edited constants and keeps runtime state", function()
    local name = h.module(v1)
    local M = require(name)
    M.score = 42          -- runtime state
    M.nested.hp = 7       -- runtime state
    M.extra = "runtime"   -- added at run time
    M.speed = 6           -- changed at run time, then edited in source
    M.up()                -- level 3
    h.rewrite(name, [[
      local M = { speed = 9, name = "hero", score = 0, nested = { hp = 100, max = 150 }, added = true }
      local level = 1
      local step = 10
      function M.level() return level end
      function M.up() level = level + step end
      return M
    ]])
    reload(name)
    assert.equal(9, M.speed, "edited constant applies")
    assert.equal(42, M.score, "runtime state survives")
    assert.equal("hero", M.name)
    assert.equal(7, M.nested.hp)
    assert.equal(150, M.nested.max)
    assert.is_nil(M.gone, "key deleted by the source is removed")
    assert.equal("runtime", M.extra, "key added at run time is kept")
    assert.is_true(M.added)
    assert.equal(3, M.level(), "upvalue state kept")
    M.up()
    assert.equal(13, M.level(), "edited upvalue constant applies")
  end)

  -- (Lua 5.3+: 1 and 1.0 are raw-equal, but one is an integer; 0.0 and -0.0 everywhere)
  it("applies a constant rewritten as another number subtype or sign", function()
    local src = [[
      local up = %s
      local M = { field = %s, zero = %s }
      function M.up() return up end
      return M
    ]]
    local name = h.module(src:format("1", "1", "0.0"))
    local M = require(name)
    if math.type then
      h.rewrite(name, src:format("1.0", "1.0", "0.0"))
      local _, report = hotreload.reload(name)
      assert.equal("float", math.type(M.field))
      assert.equal("float", math.type(M.up()))
      assert.equal(2, report.values_taken)
      h.rewrite(name, src:format("1", "1", "0.0"))
      _, report = hotreload.reload(name)
      assert.equal("integer", math.type(M.field))
      assert.equal("integer", math.type(M.up()))
      assert.equal(2, report.values_taken)
    end
    h.rewrite(name, src:format("1", "1", "-0.0"))
    local _, report = hotreload.reload(name)
    assert.equal(-math.huge, 1 / M.zero)
    assert.equal(1, report.values_taken)
  end)

  it("empties a table the source empties, and keeps an empty one the program filled", function()
    local name = h.module("return { emptied = { a = 1, b = 2 }, state = {} }")
    local M = require(name)
    local emptied, state = M.emptied, M.state
    emptied.mine = 3
    state.x = 1
    local mt = {}
    setmetatable(state, mt)
    h.rewrite(name, "return { emptied = {}, state = {} }")
    reload(name)
    assert.equal(emptied, M.emptied)
    assert.is_nil(emptied.a, "key deleted by the source is removed")
    assert.is_nil(emptied.b)
    assert.equal(3, emptied.mine, "key added at run time is kept")
    assert.equal(state, M.state)
    assert.equal(1, state.x)
    assert.equal(mt, getmetatable(state))
  end)

  it("uses the version before as the base after a reload", function()
    local name = h.module("return { v = 1, t = 0 }")
    local M = require(name)
    h.rewrite(name, "return { v = 2, t = 0 }")
    reload(name)
    M.v = 50 -- state set after the first reload
    h.rewrite(name, "return { v = 2, t = 1 }")
    reload(name)
    assert.equal(50, M.v)
    assert.equal(1, M.t)
  end)

  it("keeps live data and takes new functions for a module without a base", function()
    local path = h.write("nobase.lua", "return { n = 1, f = function() return 1 end }")
    package.loaded.nobase = dofile(path) -- loaded behind hotreload's back: no base
    local M = package.loaded.nobase
    M.n = 10
    h.write("nobase.lua", "return { n = 2, f = function() return 2 end, new = 3 }")
    reload("nobase")
    assert.equal(10, M.n)
    assert.equal(2, M.f())
    assert.equal(3, M.new)
    -- the reload captured a base: now edits apply
    h.write("nobase.lua", "return { n = 4, f = function() return 2 end, new = 3 }")
    reload("nobase")
    assert.equal(4, M.n)
  end)
end)

describe("rule 6: metatables", function()
  it("merges metatables like tables, raw, also behind __metatable", function()
    local v = [[
      local M = {}
      local mt = { __metatable = "locked", state = 0 }
      mt.__index = function(_, k) return "VERSION " .. k end
      function mt.bump() mt.state = mt.state + 1; return mt.state end
      return setmetatable(M, mt)
    ]]
    local name = h.module((v:gsub("VERSION", "v1")))
    local M = require(name)
    local mt = debug.getmetatable(M)
    mt.bump()
    h.rewrite(name, (v:gsub("VERSION", "v2")))
    reload(name)
    assert.equal("locked", getmetatable(M))
    assert.equal(mt, debug.getmetatable(M))
    assert.equal("v2 x", M.x)
    assert.equal(2, mt.bump())
  end)

  it("removes a metatable the source stopped setting, keeps one the program set", function()
    local v = [[
      local M = { t = {} }
      if SET then setmetatable(M, { __index = function() return "meta" end }) end
      return M
    ]]
    local name = h.module((v:gsub("SET", "true")))
    local M = require(name)
    reload(name) -- (the first reload records the base: the source sets a metatable)
    assert.equal("meta", M.x)
    local mine = {}
    setmetatable(M.t, mine)
    h.rewrite(name, (v:gsub("SET", "false")))
    reload(name)
    assert.is_nil(getmetatable(M))
    assert.equal(mine, getmetatable(M.t))
  end)
end)

describe("rule 7: raw access", function()
  it("never triggers metamethods of the module or its tables", function()
    local v = [[
      local M = { data = { n = 1 } }
      local trap = {}
      for _, e in ipairs({ "__index", "__newindex", "__pairs", "__len", "__eq", "__call", "__tostring" }) do
        trap[e] = function() _G.TRAPPED = (_G.TRAPPED or 0) + 1; error("metamethod " .. e) end
      end
      function M.f() return VERSION end
      M["added" .. VERSION] = true
      setmetatable(M.data, trap)
      return setmetatable(M, trap)
    ]]
    local name = h.module((v:gsub("VERSION", "1")))
    local M = require(name)
    h.rewrite(name, (v:gsub("VERSION", "2")))
    _G.TRAPPED = nil
    reload(name)
    assert.is_nil(_G.TRAPPED)
    assert.equal(2, rawget(M, "f")())
    assert.is_true(rawget(M, "added2"))
  end)
end)

describe("rule 8: cycles and depth", function()
  it("terminates on cycles", function()
    local v = [[
      local M = {}
      M.self = M
      M.a = { name = "a" }; M.b = { name = "b", a = M.a }; M.a.b = M.b
      function M.f() return VERSION end
      return M
    ]]
    local name = h.module((v:gsub("VERSION", "1")))
    local M = require(name)
    local a, b = M.a, M.b
    h.rewrite(name, (v:gsub("VERSION", "2")))
    reload(name)
    assert.equal(M, M.self)
    assert.equal(a, M.a)
    assert.equal(b, M.a.b)
    assert.equal(a, M.b.a)
    assert.equal(2, M.f())
  end)

  it("reloads a 5000-deep table without overflowing any stack", function()
    local v = [[
      local M = { root = {} }
      local t = M.root
      for i = 1, 5000 do t.child = { depth = i }; t = t.child end
      t.leaf = LEAF
      return M
    ]]
    local name = h.module((v:gsub("LEAF", "1")))
    local M = require(name)
    local deep = M.root
    for _ = 1, 4000 do deep = deep.child end
    deep.mark = "kept"
    h.rewrite(name, (v:gsub("LEAF", "2")))
    reload(name)
    local t = M.root
    for _ = 1, 4000 do t = t.child end
    assert.equal(deep, t)
    assert.equal("kept", t.mark)
    for _ = 4001, 5000 do t = t.child end
    assert.equal(2, t.leaf)
  end)
end)

describe("rule 9: non-table modules", function()
  it("reloads a module that returns a function", function()
    local v = [[
      local n = 0
      return function() n = n + STEP; return n end
    ]]
    local name = h.module((v:gsub("STEP", "1")))
    local f = require(name)
    f(); f()
    h.rewrite(name, (v:gsub("STEP", "10")))
    local g = reload(name)
    assert.equal(g, require(name))
    assert.equal(12, g())
  end)

  it("reloads a global-style module and updates its globals, keeping global state", function()
    local v = [[
      Score = Score or 0
      Registry = { kind = "registry" }
      function bump() Score = Score + STEP; Registry.last = Score; return Score end
      GLOBAL_CONST = "VERSION"
    ]]
    local name = h.module((v:gsub("STEP", "1"):gsub("VERSION", "v1")))
    assert.is_true(require(name))
    local registry = _G.Registry
    _G.bump(); _G.bump()
    h.rewrite(name, (v:gsub("STEP", "5"):gsub("VERSION", "v2")))
    assert.is_true(reload(name))
    assert.equal(registry, _G.Registry, "a global table keeps its identity")
    assert.equal(2, registry.last)
    assert.equal(7, _G.bump())
    assert.equal("v2", _G.GLOBAL_CONST)
    _G.Score, _G.Registry, _G.bump, _G.GLOBAL_CONST = nil, nil, nil, nil
  end)
end)

describe("rule 10: all or nothing", function()
  local v1 = [[
    local M = { data = { n = 1 }, value = 1 }
    local count = 0
    function M.inc() count = count + 1; return count end
    function M.tag() return "v1" end
    TOUCHED_BY_MODULE = "v1"
    return M
  ]]

  local function check_untouched(name, M, data, inc, tag)
    assert.equal(M, package.loaded[name])
    assert.equal(data, M.data)
    assert.equal(1, M.value)
    assert.is_nil(M.partial)
    assert.equal(inc, M.inc)
    assert.equal(tag, M.tag)
    assert.equal("v1", M.tag())
    assert.equal("v1", _G.TOUCHED_BY_MODULE)
  end

  it("leaves everything as it was on a syntax error", function()
    local name = h.module(v1)
    local M = require(name)
    local data, inc, tag = M.data, M.inc, M.tag
    M.inc()
    h.rewrite(name, "local M = {} M.x = = 1 return M")
    local m, err = hotreload.reload(name)
    assert.is_nil(m)
    assert.matches("cannot reload '" .. name .. "'", err, 1, true)
    assert.matches(name .. ".lua:1:", err, 1, true)
    check_untouched(name, M, data, inc, tag)
    assert.equal(2, M.inc())
  end)

  it("leaves everything as it was when the top level raises, then reloads with state", function()
    local name = h.module(v1)
    local M = require(name)
    local data, inc, tag = M.data, M.inc, M.tag
    M.inc(); M.inc()
    h.rewrite(name, [[
      TOUCHED_BY_MODULE = "v2"
      package.loaded[...] = "clobbered"
      local M = { partial = true, value = 2 }
      error("boom in top level")
      return M
    ]])
    local m, err = hotreload.reload(name)
    assert.is_nil(m)
    assert.matches(name .. ".lua:4: boom in top level", err, 1, true)
    check_untouched(name, M, data, inc, tag)
    assert.equal(3, M.inc())

    h.rewrite(name, (v1:gsub('"v1"', '"v2"')))
    reload(name)
    assert.equal("v2", M.tag())
    assert.equal(4, M.inc(), "state kept across a failed reload")
    _G.TOUCHED_BY_MODULE = nil
  end)

  it("refuses to turn a table module into something else", function()
    local name = h.module(v1)
    local M = require(name)
    local data, inc, tag = M.data, M.inc, M.tag
    h.rewrite(name, "return function() end")
    local m, err = hotreload.reload(name)
    assert.is_nil(m)
    assert.matches("returns a function", err, 1, true)
    check_untouched(name, M, data, inc, tag)
    _G.TOUCHED_BY_MODULE = nil
  end)
end)

describe("rule 11: old code is collectable", function()
  it("lets old functions be collected", function()
    local v = [[
      local M = {}
      local helper = function() return VERSION end
      function M.f() return helper() end
      M.t = { g = function() return VERSION end }
      return M
    ]]
    local name = h.module((v:gsub("VERSION", "1")))
    local M = require(name)
    local _, old_helper = debug.getupvalue(M.f, 1)
    local weak = setmetatable({ M.f, M.t.g, old_helper }, { __mode = "v" })
    old_helper = nil -- luacheck: ignore
    h.rewrite(name, (v:gsub("VERSION", "2")))
    reload(name)
    assert.equal(2, M.f())
    h.collect()
    assert.is_nil(weak[1])
    assert.is_nil(weak[2])
    assert.is_nil(weak[3])
  end)

  it("lets a module the program dropped be collected", function()
    local name = h.module("local M = {} function M.f() return M end return M")
    local weak = setmetatable({}, { __mode = "v" })
    -- in a frame of its own, which no stack slot outlives (LuaJIT keeps a frame's dead slots)
    local function load_and_drop()
      weak[1] = require(name).f
      package.loaded[name] = nil
    end
    load_and_drop()
    -- each reload checks a few of the modules whose base hotreload keeps: within a bounded
    -- number of them, whatever this process loaded before, the dropped one is forgotten
    local other = h.module("return { f = function() return 1 end }")
    require(other)
    for i = 1, 2000 do
      reload(other)
      if i % 50 == 0 then
        h.collect()
        if weak[1] == nil then break end
      end
    end
    h.collect()
    assert.is_nil(weak[1])
  end)

  it("does not grow the heap over 200 reloads", function()
    local v = [[
      local M = { data = {} }
      for i = 1, 50 do M.data[i] = "item" .. i end
      local n = 0
      for i = 1, 30 do M["f" .. i] = function() n = n + i; return n end end
      return M
    ]]
    local name = h.module(v)
    local M = require(name)
    for _ = 1, 20 do reload(name) end
    h.collect()
    local after20 = collectgarbage("count")
    for _ = 1, 180 do reload(name) end
    h.collect()
    local after200 = collectgarbage("count")
    assert.is_function(M.f1)
    assert.is_true(after200 < after20 * 1.02 + 16, ("heap %.1f KB -> %.1f KB"):format(after20, after200))
  end)
end)

describe("rule 12: re-entrancy", function()
  it("works inside a coroutine", function()
    local name = h.module("return { v = 1, f = function() return 1 end }")
    local M = require(name)
    h.rewrite(name, "return { v = 1, f = function() return 2 end }")
    local co = coroutine.create(function()
      local m = reload(name)
      coroutine.yield(m.f())
      return "done"
    end)
    local ok, r = coroutine.resume(co)
    assert.is_true(ok, r)
    assert.equal(2, r)
    assert.equal(2, M.f())
    assert.same({ true, "done" }, { coroutine.resume(co) })
  end)

  it("lets a running function of the module finish with the old code", function()
    local v = [[
      local hotreload = require "hotreload"
      local M = {}
      local calls = 0
      function M.run(name)
        calls = calls + 1
        if name then assert(hotreload.reload(name)) end
        return "VERSION", calls
      end
      return M
    ]]
    local name = h.module((v:gsub("VERSION", "v1")))
    local M = require(name)
    h.rewrite(name, (v:gsub("VERSION", "v2")))
    local tag, calls = M.run(name)
    assert.equal("v1", tag, "the frame that reloaded finishes with the old code")
    assert.equal(1, calls)
    tag, calls = M.run()
    assert.equal("v2", tag)
    assert.equal(2, calls)
  end)
end)

describe("rule 13: any searcher", function()
  it("reloads a package through pkg/init.lua", function()
    h.write("pkgdir/init.lua", "return { v = 1, f = function() return 'init v1' end }")
    local P = require("pkgdir")
    P.v = 5
    h.write("pkgdir/init.lua", "return { v = 1, f = function() return 'init v2' end }")
    assert.equal(P, reload("pkgdir"))
    assert.equal("init v2", P.f())
    assert.equal(5, P.v)
  end)

  it("reloads through a custom searcher (a pak file)", function()
    local pak = { ["pak.mod"] = "local n = 0 return { f = function() n = n + 1 return 'pak v1', n end }" }
    local searchers = package.searchers or package.loaders
    local function pak_searcher(name)
      local src = pak[name]
      if not src then return "\n\tno pak entry '" .. name .. "'" end
      return assert((loadstring or load)(src, "=pak:" .. name)), "pak:" .. name
    end
    table.insert(searchers, 2, pak_searcher)
    local M = require("pak.mod")
    M.f(); M.f()
    pak["pak.mod"] = "local n = 0 return { f = function() n = n + 1 return 'pak v2', n end }"
    reload("pak.mod")
    local tag, n = M.f()
    assert.equal("pak v2", tag)
    assert.equal(3, n)
    for i, s in ipairs(searchers) do
      if s == pak_searcher then table.remove(searchers, i) break end
    end
  end)
end)

describe("rule 14: LuaJIT traces", function()
  it("runs the new code and the joined cells in hot loops after a reload", function()
    local v = [[
      local M = {}
      local total = 0
      function M.add(x) total = total + x * SCALE; return total end
      function M.total() return total end
      return M
    ]]
    local name = h.module((v:gsub("SCALE", "1")))
    local M = require(name)
    local add = function(x) return M.add(x) end
    for _ = 1, 20000 do add(1) end -- hot enough to be compiled on LuaJIT
    assert.equal(20000, M.total())
    h.rewrite(name, (v:gsub("SCALE", "2")))
    reload(name)
    for _ = 1, 20000 do add(1) end
    assert.equal(60000, M.total())
  end)

  it("does not keep a helper that a trace constant-folded into an old function", function()
    local v = [[
      local M = {}
      local function helper(x) return x * SCALE end
      function M.sum(n) local s = 0 for i = 1, n do s = s + helper(i) end return s end
      return M
    ]]
    local name = h.module((v:gsub("SCALE", "1")))
    local M = require(name)
    local held = M.sum -- an old function still held somewhere
    for _ = 1, 300 do held(100) end -- hot: LuaJIT compiles it, with `helper` as a constant
    assert.equal(5050, held(100))
    h.rewrite(name, (v:gsub("SCALE", "2")))
    reload(name)
    assert.equal(10100, M.sum(100))
    assert.equal(10100, held(100), "the old function's helper cell holds the new helper")
  end)

  -- A module that is its functions' environment (`setfenv(1, M)`, as `module()` does): the
  -- new functions' environment is the new copy of M, which merges into the running M.
  local fenv = rawget(_G, "setfenv") and it or pending
  fenv("gives new functions the running module as their environment (LuaJIT)", function()
    local v = [[
      local M = {}
      setfenv(1, M)
      count = 0
      function bump() count = count + 1; return count, "VERSION" end
      return M
    ]]
    local name = h.module((v:gsub("VERSION", "v1")))
    local M = require(name)
    assert.same({ 1, "v1" }, { M.bump() })
    h.rewrite(name, (v:gsub("VERSION", "v2")))
    assert(hotreload.reload(name, { replace = false })) -- the merge alone, without the walk
    assert.same({ 2, "v2" }, { M.bump() })
    assert.equal(M, getfenv(M.bump))
  end)
end)
