-- The host's VM as it is: table layouts of every release, LuaJIT's cdata, a module built for
-- another Lua. Nothing here may crash the host; each case runs under every VM of the matrix.
local h = require "spec.helpers"
local hotreload = h.hotreload()

teardown(h.cleanup)

local function reload(name, opts)
  local m, report = hotreload.reload(name, opts)
  assert(m ~= nil, report)
  return m, report
end

describe("tables of every shape", function()
  -- Lua 5.4.0 keeps "the array limit is not the real size" in another byte than 5.4.1+:
  -- read as 5.4.1's, a 5-slot array part was walked as 8 slots (past its end)
  it("replaces functions held in array parts of every size", function()
    local name = h.module("local M = {} function M.f() return 'v1' end return M")
    local M = require(name)
    local held = {}
    for i = 1, 200 do held[i] = { M.f, M.f, M.f, M.f, M.f } end
    for n = 0, 40 do
      local t = {}
      for i = 1, n do t[i] = M.f end
      held[#held + 1] = t
      local u = {}
      for i = 1, n do u[i] = M.f end
      for i = math.floor(n / 2) + 1, n do u[i] = nil end
      local _ = #u -- moves the array limit below the array part's size
      u[n] = n > 0 and M.f or nil
      held[#held + 1] = u
    end
    reload(name, { source = "local M = {} function M.f() return 'v2' end return M" })
    local old = 0
    for _, t in ipairs(held) do
      for _, f in pairs(t) do
        if f() ~= "v2" then old = old + 1 end
      end
    end
    assert.equal(0, old)
  end)
end)

local jit_only = rawget(_G, "jit") and it or pending
describe("LuaJIT's cdata", function()
  jit_only("reloads a module whose source has a cdata key, with the walk and without", function()
    local src = "return { t = { [5LL] = 'x' }, n = %d, f = function() return %d end }"
    local name = h.module(src:format(1, 1))
    local M = require(name)
    for _, replace in ipairs({ true, false }) do
      reload(name, { replace = replace, source = src:format(2, 2) })
      assert.equal(2, M.n)
      assert.equal(2, M.f())
    end
    local values = 0
    for _, v in pairs(M.t) do
      assert.equal("x", v)
      values = values + 1
    end
    assert.is_true(values >= 1)
  end)

  jit_only("applies an edited 64-bit constant, in a field and an upvalue, and keeps state", function()
    local src = [[
      local step = %s
      local M = { limit = %s, count = 0LL }
      function M.step() return step end
      return M
    ]]
    local name = h.module(src:format("1LL", "10ULL"))
    local M = require(name)
    M.count = M.count + 3
    local report = select(2, reload(name, { source = src:format("2LL", "20ULL") }))
    -- in place, cdata is compared by type and value; through the API (portable, or a
    -- build whose layout the probe refused) it is kept like a userdata
    if hotreload.slot_reads == "in place" then
      assert.equal("20ULL", tostring(M.limit))
      assert.equal("2LL", tostring(M.step()))
      assert.equal(2, report.values_taken)
    else
      assert.equal("10ULL", tostring(M.limit))
      assert.equal("1LL", tostring(M.step()))
    end
    assert.equal("3LL", tostring(M.count))
    -- an unchanged constant stays as it runs, whatever reads it
    report = select(2, reload(name, { source = src:format("2LL", "20ULL") }))
    assert.equal(0, report.values_taken)
    assert.equal("3LL", tostring(M.count))
  end)
end)

describe("a module built for another Lua", function()
  -- the other flavours `make build` made; the one this interpreter loads is left out
  local others = {}
  for _, flavour in ipairs({ "lua53", "lua54", "lua55", "luajit" }) do
    local path = "build/" .. flavour .. "/hotreload.so"
    local f = io.open(path, "rb")
    if f then
      f:close()
      if flavour ~= hotreload.flavor then others[#others + 1] = path end
    end
  end
  local twin = ({ lua54 = "build/lua55/hotreload.so", lua55 = "build/lua54/hotreload.so" })[hotreload.flavor]
  local with_twin = twin and io.open(twin, "rb") and it or pending

  -- (in a child process: a crash must fail the spec, not end it)
  it("is refused with a message, never a crash", function()
    assert.is_true(#others > 0, "no other flavour built")
    for _, path in ipairs(others) do
      local code = h.run_child(([[
        local open = package.loadlib(%q, "luaopen_hotreload")
        if open then assert(not pcall(open)) end
      ]]):format(path))
      assert.equal(0, code, path)
    end
  end)

  -- Lua 5.4 and 5.5 share every symbol a build needs: only the module itself can tell
  with_twin("says which Lua it was built for and what to build", function()
    local out = h.root .. "/twin.out"
    local code = h.run_child(([[
      local open = assert(package.loadlib(%q, "luaopen_hotreload"))
      local ok, err = pcall(open)
      local f = assert(io.open(%q, "w"))
      f:write(tostring(ok), "\n", tostring(err))
      f:close()
    ]]):format(twin, out))
    assert.equal(0, code)
    local f = assert(io.open(out))
    local text = f:read("a")
    f:close()
    assert.matches("^false\n", text)
    local want = hotreload.flavor == "lua54" and "Lua 5.5" or "Lua 5.4"
    assert.matches("hotreload: this hotreload.so was built for " .. want, text, 1, true)
    assert.matches("--features " .. hotreload.flavor .. ",module", text, 1, true)
  end)
end)
