-- Changes that reach the modules that captured them: `dependents = true` reloads a module and
-- then the modules that required it, in dependency order, as one transaction.
local h = require "spec.helpers"
local hotreload = require "hotreload"

teardown(h.cleanup)

local function conf_source(speed)
  return ("return { speed = %d }"):format(speed)
end

local function player_source(conf, extra)
  return ([[
ORDER = ORDER or {}
ORDER[#ORDER + 1] = ...
local SPEED = require(%q).speed
local M = { pos = 0 }
function M.step() M.pos = M.pos + SPEED return M.pos end
%s
return M
]]):format(conf, extra or "")
end

describe("dependents", function()
  it("brings a changed value to the module that captured it, keeping its state", function()
    local conf = h.module(conf_source(5))
    local player = h.module(player_source(conf))
    local P = require(player)
    assert.equal(5, P.step())
    assert.same({ player }, hotreload.dependents(conf))

    h.rewrite(conf, conf_source(7))
    local C, report = assert(hotreload.reload(conf, { dependents = true }))
    assert.equal(7, C.speed)
    assert.same({ player }, report.dependents)
    assert.equal(12, P.step(), "the captured speed is the new one, the position kept")

    -- without the option, the captured value stays as the dependent captured it
    h.rewrite(conf, conf_source(9))
    assert(hotreload.reload(conf))
    assert.equal(19, P.step())
  end)

  it("rolls the whole chain back when a dependent fails", function()
    local conf = h.module(conf_source(5))
    local player = h.module(player_source(conf))
    local P = require(player)
    P.step()
    h.rewrite(conf, conf_source(7))
    h.rewrite(player, player_source(conf, "error('broken dependent')"))
    local ok, err = hotreload.reload(conf, { dependents = true })
    assert.is_nil(ok)
    assert.matches("broken dependent", err, 1, true)
    assert.equal(5, require(conf).speed, "the changed module was rolled back")
    assert.equal(10, P.step())
  end)

  it("reloads a module nobody required on its own", function()
    local alone = h.module("LOADS_ALONE = (LOADS_ALONE or 0) + 1 return { v = 1 }")
    require(alone)
    local loads = _G.LOADS_ALONE
    local _, report = assert(hotreload.reload(alone, { dependents = true }))
    assert.same({}, report.dependents)
    assert.same({}, hotreload.dependents(alone))
    assert.equal(loads + 1, _G.LOADS_ALONE)
  end)

  it("reloads each module of a diamond once, in an order that respects it", function()
    local c = h.module("ORDER = ORDER or {} ORDER[#ORDER + 1] = ... return { v = 1 }")
    local function requiring(...)
      local lines = { "ORDER = ORDER or {} ORDER[#ORDER + 1] = ..." }
      for _, m in ipairs({ ... }) do lines[#lines + 1] = ("require(%q)"):format(m) end
      lines[#lines + 1] = "return {}"
      return table.concat(lines, "\n")
    end
    local a = h.module(requiring(c))
    local b = h.module(requiring(c))
    local d = h.module(requiring(a, b))
    require(d)
    local expected = { a, b }
    table.sort(expected)
    assert.same({ expected[1], expected[2], d }, hotreload.dependents(c))
    _G.ORDER = {}
    assert(hotreload.reload(c, { dependents = true }))
    assert.equal(4, #_G.ORDER, table.concat(_G.ORDER, " "))
    local at = {}
    for i, m in ipairs(_G.ORDER) do
      assert.is_nil(at[m], m .. " ran twice")
      at[m] = i
    end
    assert.is_true(at[c] < at[a] and at[c] < at[b] and at[a] < at[d] and at[b] < at[d],
      table.concat(_G.ORDER, " "))
  end)

  it("makes poll reload the dependents too with hotreload.defaults.dependents", function()
    local lfs = require "lfs"
    local dir = h.root .. "/depwatch"
    assert(lfs.mkdir(dir))
    local w = assert(hotreload.watch(dir))
    hotreload.defaults.dependents = true
    finally(function()
      hotreload.defaults.dependents = nil
      w:close()
    end)
    h.write("depwatch/conf.lua", conf_source(5))
    h.write("depwatch/player.lua", player_source("depwatch.conf"))
    local P = require("depwatch.player")
    assert.equal(5, P.step())
    assert(h.wait_until(function() return hotreload.pending() == 2 end))
    -- the events of the first writes (each ready once compiled ahead)
    assert(h.wait_until(function() hotreload.poll() return hotreload.pending() == 0 end))
    h.write("depwatch/conf.lua", conf_source(7))
    local n = 0
    assert(h.wait_until(function()
      n = n + hotreload.poll()
      return n >= 2
    end), "conf and player were not both reloaded")
    assert.equal(2, n)
    assert.equal(12, P.step())
  end)

  it("names what a reload changed, with changes = true", function()
    local m = h.module([[
local M = { speed = 5, legacy = 1, list = { 1, 2 } }
function M.update() return 1 end
function M.draw() return 1 end
M.Player = { draw = function() return 1 end, hp = 3 }
return M
]])
    require(m)
    h.rewrite(m, [[
local M = { speed = 7, list = { 1, 5 } }

function M.update() return 2 end
function M.draw() return 1 end
M.Player = { draw = function() return 2 end, hp = 3 }
M.added = true
return M
]])
    local _, report = assert(hotreload.reload(m, { changes = true }))
    assert.same({ "-legacy", "Player.draw", "added", "list[2]", "speed", "update" }, report.changed)
    -- a neutral edit that moves every line changes nothing
    h.rewrite(m, "\n\n" .. [[
local M = { speed = 7, list = { 1, 5 } }
function M.update() return 2 end
function M.draw() return 1 end
M.Player = { draw = function() return 2 end, hp = 3 }
M.added = true
return M
]])
    _, report = assert(hotreload.reload(m, { changes = true }))
    assert.same({}, report.changed)
    _, report = assert(hotreload.reload(m))
    assert.is_nil(report.changed, "only when asked for")
  end)

  it("names a captured local whose value changed", function()
    local conf = h.module(conf_source(5))
    local player = h.module(player_source(conf))
    require(player)
    h.rewrite(conf, conf_source(6))
    local _, report = assert(hotreload.reload(conf, { dependents = true, changes = true }))
    assert.same({ "speed" }, report.changed)
    assert.same({ player }, report.dependents)
  end)

  it("keeps what a dependent required when its own reload fails", function()
    local conf = h.module(conf_source(5))
    local player = h.module(player_source(conf))
    require(player)
    h.rewrite(player, "error('mid-edit')")
    assert.is_nil(hotreload.reload(player))
    assert.same({ player }, hotreload.dependents(conf), "the running player still requires conf")
  end)

  it("credits a reload run inside another module's top level to the module reloaded", function()
    local conf = h.module(conf_source(5))
    local player = h.module(player_source(conf))
    require(player)
    local boot = h.module(("assert(require('hotreload').reload(%q)) return {}"):format(player))
    require(boot)
    assert.same({ player }, hotreload.dependents(conf))
  end)

  it("credits requires made on a coroutine to the top level that runs it", function()
    local a = h.module("return {}")
    local b = h.module("return {}")
    local top = h.module(([[
coroutine.wrap(function() require(%q) end)()
require(%q)
return {}
]]):format(a, b))
    require(top)
    assert.same({ top }, hotreload.dependents(a))
    assert.same({ top }, hotreload.dependents(b))
  end)

  it("lists dependents nearest first, through modules in between", function()
    local base = h.module("return {}")
    local mid = h.module(("require(%q) return {}"):format(base))
    local top = h.module(("require(%q) return {}"):format(mid))
    require(top)
    assert.same({ mid, top }, hotreload.dependents(base))
    assert.has_error(function() hotreload.dependents(5) end)
  end)
end)
