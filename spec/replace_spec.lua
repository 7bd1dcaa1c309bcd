-- Old functions are replaced wherever the VM holds them (issue: "sometimes old, sometimes
-- new"), factory closures included; each spec runs under every VM.
local h = require "spec.helpers"
local hotreload = h.hotreload()

teardown(h.cleanup)

local function reload(name, opts)
  local m, err = hotreload.reload(name, opts)
  assert(m ~= nil, err)
  return m
end

local function versions(src)
  local name = h.module((src:gsub("VERSION", "v1")))
  return name, function(tag) h.rewrite(name, (src:gsub("VERSION", tag))) end
end

local basic = [[
  local M = {}
  function M.f() return "VERSION" end
  function M.on_click() return "click VERSION" end
  return M
]]

describe("replacing old functions everywhere", function()
  it("updates a callback stored in another table", function()
    local name, edit = versions(basic)
    local M = require(name)
    local bus = { handlers = { click = M.on_click }, list = { M.f, M.f } }
    edit("v2")
    reload(name)
    assert.equal("click v2", bus.handlers.click())
    assert.equal("v2", bus.list[1]())
    assert.equal("v2", bus.list[2]())
  end)

  -- only functions the module's previous version made are replaced: a patch the program
  -- put in (a test double, an editor plugin's hook) is the program's
  it("never rewrites a function the program made, wherever it is held", function()
    local name, edit = versions(basic)
    local M = require(name)
    local function patch() return "patch" end
    local holder = { f = patch }
    M.f = patch
    -- a test helper that wraps the module's function and calls the original
    local calls = 0
    local original = M.on_click
    M.on_click = function(...) calls = calls + 1 return original(...) end
    local wrapper = M.on_click
    reload(name) -- the same source
    assert.equal(patch, M.f)
    assert.equal(patch, holder.f)
    assert.equal("patch", patch())
    assert.equal(wrapper, M.on_click)
    edit("v1") -- still unchanged code: the wrapped original runs the new version
    reload(name)
    assert.equal("click v1", M.on_click())
    assert.equal(1, calls)
    assert.equal("patch", holder.f())
  end)

  -- `M.f = F.wrap(fn)`: the wrapper is a closure of another module's factory; the same
  -- factory's other closures (other modules') are not the reloaded module's to count
  it("counts no closure another module's factory made as left on the old code", function()
    local factory = h.module([[
      local F = {}
      function F.wrap(fn) return function(...) return fn(...) end end
      return F
    ]])
    local users = h.module(([[
      local F = require %q
      local U = {}
      for i = 1, 5 do U[i] = F.wrap(function() return i end) end
      return U
    ]]):format(factory))
    local U = require(users)
    local src = "local F = require %q local M = {} M.f = F.wrap(function() return %q end) return M"
    local name = h.module(src:format(factory, "v1"))
    local M = require(name)
    h.rewrite(name, src:format(factory, "v2"))
    local _, report = hotreload.reload(name)
    assert.equal(0, report.closures_left)
    assert.equal(0, report.functions_added)
    assert.equal("v2", M.f())
    assert.equal(3, U[3]())
  end)

  -- the planner meets functions in the hash order of the tables it walks, which differs from
  -- run to run: a closure's match must not depend on it
  it("tells closures of two factories on one line apart, whatever order they were met in", function()
    local src = [[
      local M = {}
      function M.f() return function() return "F" end end function M.g() return function() return "G" end end
      return M
    ]]
    local name = h.module((src:gsub("F", "f1"):gsub("G", "g1")))
    local M = require(name)
    local f, g = M.f(), M.g()
    h.rewrite(name, (src:gsub("F", "f2"):gsub("G", "g1")))
    local _, report = hotreload.reload(name)
    assert.equal("f2", f(), "made by f: its new body")
    assert.equal("g1", g(), "made by g: unchanged")
    assert.equal(1, report.closures_updated)
    assert.equal(0, report.closures_left)
  end)

  it("updates every key of a table whose border key is in its hash part", function()
    -- t[1] is stored in the hash part: a walk that resumes `next` from key #t skips the
    -- hash entries placed before it
    local name, edit = versions(basic)
    local M = require(name)
    local tables = {}
    for n = 3, 60 do -- hash parts with free nodes, where t[1] lands anywhere
      local t = {}
      for i = 1, n do t["k" .. i] = M.f end
      t[1] = M.f
      tables[n] = t
    end
    edit("v2")
    reload(name)
    for n = 3, 60 do
      for k, f in pairs(tables[n]) do assert.equal("v2", f(), k .. " of " .. n) end
    end
  end)

  it("points a metatable the new top level set at the running class table", function()
    local registry = h.module("return {}")
    local R = require(registry)
    local src = [[
      local R = require(%q)
      local M = {}
      M.__index = M
      function M:hi() return "%s" end
      R.obj = setmetatable({}, M)
      return M
    ]]
    local name = h.module(src:format(registry, "v1"))
    local M = require(name)
    h.rewrite(name, src:format(registry, "v2"))
    reload(name)
    assert.equal(M, getmetatable(R.obj))
    assert.equal("v2", R.obj:hi())
  end)

  it("updates a function another module captured as an upvalue", function()
    local name, edit = versions(basic)
    require(name)
    local src = "local f = require(%q).f\nreturn { call = function() return f() end }"
    local other = h.module(src:format(name))
    local O = require(other)
    edit("v2")
    reload(name)
    assert.equal("v2", O.call())
  end)

  it("updates a local of a suspended coroutine", function()
    local name, edit = versions(basic)
    local M = require(name)
    local co = coroutine.create(function()
      local f = M.f
      coroutine.yield(f())
      return f()
    end)
    assert.same({ true, "v1" }, { coroutine.resume(co) })
    edit("v2")
    reload(name)
    assert.same({ true, "v2" }, { coroutine.resume(co) })
  end)

  it("updates locals of the main thread while a coroutine reloads", function()
    local name, edit = versions(basic)
    local f = require(name).f
    edit("v2")
    local co = coroutine.wrap(function() reload(name) end)
    co()
    assert.equal("v2", f())
  end)

  it("updates locals of the running function", function()
    local name, edit = versions(basic)
    local f = require(name).f
    edit("v2")
    reload(name)
    assert.equal("v2", f())
  end)

  it("makes old references to a function module call the new one", function()
    local name, edit = versions([[
      local calls = 0
      return function() calls = calls + 1 return "VERSION", calls end
    ]])
    local f = require(name)
    local holder = { f }
    f()
    edit("v2")
    local g = reload(name)
    assert.equal(g, require(name))
    assert.same({ "v2", 2 }, { holder[1]() })
    assert.same({ "v2", 3 }, { f() })
  end)

  it("makes an old reference to a global function run the new code", function()
    local name, edit = versions([[
      function hotreload_spec_greet() return "hello VERSION" end
    ]])
    require(name)
    local greet = _G.hotreload_spec_greet
    local t = { greet = greet }
    edit("v2")
    reload(name)
    assert.equal("hello v2", greet())
    assert.equal("hello v2", t.greet())
    _G.hotreload_spec_greet = nil
  end)

  it("replaces an old function used as a table key", function()
    local name, edit = versions(basic)
    local M = require(name)
    local seen = { [M.f] = "f's entry" }
    edit("v2")
    reload(name)
    assert.equal("f's entry", seen[M.f])
    local keys = 0
    for k in pairs(seen) do
      keys = keys + 1
      assert.equal("v2", k())
    end
    assert.equal(1, keys, "the old key is gone")
  end)

  it("reaches old functions in every kind of table slot", function()
    local name, edit = versions(basic)
    local M = require(name)
    local array = { M.f, 1, "x", M.f }
    local holes = {}
    for i = 1, 16 do holes[i] = {} end
    for i = 10, 16 do holes[i] = nil end
    holes[11] = { M.f } -- past the border `#` finds, still in the array part
    assert(#holes == 9)
    local hash = { [1.5] = M.f, [true] = M.f, [100] = M.f, name = M.f, [{}] = M.f }
    local deep = {}
    local level = deep
    for _ = 1, 300 do -- deeper than the walk keeps on the stack
      level.next = {}
      level = level.next
    end
    level.f = M.f
    local shared = { M.f }
    local twice = { a = shared, b = shared, { shared } }
    local classy = setmetatable({ f = M.f }, { __index = { g = M.f } })
    local wrapped = coroutine.wrap(function()
      local t = { M.f }
      coroutine.yield()
      return t
    end)
    wrapped()
    edit("v2")
    reload(name)
    assert.equal("v2", array[1]())
    assert.equal("v2", array[4]())
    assert.equal("v2", holes[11][1]())
    for k, f in pairs(hash) do assert.equal("v2", f(), tostring(k)) end
    assert.equal("v2", level.f())
    assert.equal("v2", twice.a[1]())
    assert.equal("v2", classy.f())
    assert.equal("v2", classy.g())
    assert.equal("v2", wrapped()[1]())
  end)

  -- Lua 5.4 and 64-bit-object LuaJIT (GC64) read in place unless HOTRELOAD_PORTABLE_WALK
  -- says not to; LuaJIT 2.0 and 2.1 builds without GC64 fall back to the API
  local function reads_in_place()
    local portable = os.getenv("HOTRELOAD_PORTABLE_WALK")
    if portable ~= nil and portable ~= "0" then return false end
    if hotreload.flavor == "luajit" then
      local ok, ffi = pcall(require, "ffi")
      return ok and ffi.abi("gc64")
    end
    return hotreload.flavor == "lua54"
  end

  it("reads tables in place on LuaJIT and Lua 5.4 unless told not to, by lua_next elsewhere", function()
    assert.equal(reads_in_place() and "in place" or "lua_next", hotreload.table_walk)
  end)

  it("reads stack slots in place on LuaJIT and Lua 5.4 unless told not to, by the API elsewhere", function()
    assert.equal(reads_in_place() and "in place" or "api", hotreload.slot_reads)
  end)

  it("reaches per-type metatables", function()
    local name, edit = versions(basic)
    local M = require(name)
    local saved = debug.getmetatable(0)
    debug.setmetatable(0, { __index = { f = M.f } })
    edit("v2")
    reload(name)
    local f = (0).f
    debug.setmetatable(0, saved)
    assert.equal("v2", f())
  end)

  it("runs the new body in closures a factory made before the reload, each with its own state", function()
    local name = h.module([[
      local M = {}
      function M.counter(step)
        local n = 0
        return function() n = n + step * 1 return n end
      end
      return M
    ]])
    local M = require(name)
    local a, b = M.counter(1), M.counter(2)
    local keep = { a = a }
    a(); a(); b()
    h.rewrite(name, [[
      local M = {}
      function M.counter(step)
        local n = 0
        return function() n = n + step * 100 return n end
      end
      return M
    ]])
    reload(name)
    assert.equal(102, a(), "new body, own state")
    assert.equal(202, b(), "new body, own state")
    assert.equal(a, keep.a, "the same closure everywhere")
    local c = M.counter(3)
    assert.equal(300, c())
  end)

  it("leaves a closure it cannot match safely on the old code", function()
    local name = h.module([[
      local M = {}
      function M.make() local n = 0 return function() n = n + 1 return n end end
      return M
    ]])
    local M = require(name)
    local f = M.make()
    f()
    -- the new prototype captures a variable the old closure never had
    h.rewrite(name, [[
      local M = {}
      function M.make() local n, extra = 0, 10 return function() n = n + extra return n end end
      return M
    ]])
    reload(name)
    assert.equal(2, f(), "old body, still working")
    assert.equal(10, M.make()())
  end)

  it("joins closures the new top level registered elsewhere to the existing state", function()
    -- (the old top level's callback was made by a chunk that no longer exists: it keeps its
    -- body, shares the state, and is counted as left; __unload is the way to remove it)
    _G.hotreload_spec_bus = {}
    local src = [[
      local M = {}
      local count = 0
      function M.count() return count end
      _G.hotreload_spec_bus[#_G.hotreload_spec_bus + 1] = function() count = count + STEP end
      return M
    ]]
    local name = h.module((src:gsub("STEP", "1")))
    local M = require(name)
    _G.hotreload_spec_bus[1]()
    h.rewrite(name, (src:gsub("STEP", "10")))
    reload(name)
    _G.hotreload_spec_bus[2]() -- registered by the new top level
    assert.equal(11, M.count())
    _G.hotreload_spec_bus[1]()
    assert.equal(12, M.count(), "old callback, same state")
    _G.hotreload_spec_bus = nil
  end)

  it("can be turned off per reload and by default", function()
    local name, edit = versions(basic)
    local M = require(name)
    local held = { f = M.f }
    edit("v2")
    reload(name, { replace = false })
    assert.equal("v2", M.f())
    assert.equal("v1", held.f(), "not replaced outside the module")
    hotreload.defaults.replace = false
    edit("v3")
    reload(name)
    assert.equal("v1", held.f())
    hotreload.defaults.replace = true
    local held3 = { f = M.f }
    edit("v4")
    reload(name)
    assert.equal("v4", held3.f())
    assert.equal("v1", held.f(), "references a replace = false reload skipped stay behind")
    assert.has_error(function() hotreload.reload(name, { replace = "yes" }) end)
  end)

  it("lets old versions be collected after replacing them", function()
    local name, edit = versions([[
      local M = {}
      function M.f() return "VERSION" end
      function M.make() return function() return "made VERSION" end end
      return M
    ]])
    local M = require(name)
    local made = M.make()
    local holder = { M.f, made }
    local weak = setmetatable({ M.f, made }, { __mode = "v" })
    made = nil -- luacheck: ignore
    edit("v2")
    reload(name)
    assert.equal("v2", holder[1]())
    assert.equal("made v2", holder[2]())
    h.collect()
    assert.is_nil(weak[1])
    assert.is_nil(weak[2])
  end)
end)
