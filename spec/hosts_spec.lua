-- End to end in the real hosts, with the LuaJIT build: Neovim headless (Debian's 0.7.2, through
-- lua/hotreload/nvim.lua) and LÖVE 11.4 under xvfb-run (through lua/hotreload/love.lua). Each
-- host runs a script that edits a watched file and checks that the running program picks up
-- the new code with its state; the script writes "ok" or what went wrong to a result file.
local h = require "spec.helpers"

teardown(h.cleanup)

local repo = assert(io.popen("pwd")):read("*l")
local so = repo .. "/build/luajit/hotreload.so"

local function installed(cmd)
  return h.sh("command -v " .. cmd .. " >/dev/null 2>&1") == 0
end

-- Whether the host's commands are all installed (if not, the spec is marked pending with
-- how to install them); then the LuaJIT build must be there.
local function host(commands, packages)
  for _, cmd in ipairs(commands) do
    if not installed(cmd) then
      pending(table.concat(commands, " or ") .. " is not installed (apt-get install "
        .. packages .. ")")
      return false
    end
  end
  assert(io.open(so), "build the LuaJIT module first (make build)")
  return true
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- Lua source of a `write(path, text)` function for the host scripts.
local WRITE = [[
local function write(path, text)
  local f = assert(io.open(path, "wb")) f:write(text) f:close()
end
]]

describe("Neovim", function()
  it("a watched plugin runs its new code, keeps its state, reports errors; :HotReload", function()
    if not host({ "nvim" }, "neovim") then return end
    local plug = h.root .. "/nvplug"
    local plugin = [[
      local M = {}
      local n = 0
      function M.count() n = n + 1 return n end
      function M.greet() return "%s" end
      return M
    ]]
    h.write("nvplug/lua/myplug/init.lua", plugin:format("v1"))
    h.write("nvother/other.lua", "return { v = 1 }")
    local out = h.root .. "/nvim.out"
    local script = h.write("nvim_test.lua", WRITE .. ([[
      package.cpath = %q .. "/build/luajit/?.so;" .. package.cpath
      package.path = %q .. "/lua/?.lua;" .. %q .. "/nvother/?.lua;" .. package.path
      local plug_dir, out, plugin = %q, %q, %q
      local ok, err = pcall(function()
        local notes = {}
        vim.notify = function(msg) notes[#notes + 1] = msg end
        local hr = require("hotreload.nvim").setup{ dirs = { plug_dir }, interval = 10,
          verbose = true }
        assert(require("hotreload").flavor == "luajit")
        local plug = require "myplug"
        local greet = plug.greet
        plug.count()
        write(plug_dir .. "/lua/myplug/init.lua", plugin:format("v2"))
        assert(vim.wait(5000, function() return plug.greet() == "v2" end, 10), "not reloaded")
        assert(greet() == "v2", "an old reference runs old code")
        assert(plug.count() == 2, "state lost")
        assert(vim.wait(1000, function()
          for _, note in ipairs(notes) do
            if note == "reloaded myplug: greet" then return true end
          end
        end, 10), "the verbose notice does not name the module and its change: "
          .. table.concat(notes, " | "))
        write(plug_dir .. "/lua/myplug/init.lua", "return {")
        assert(vim.wait(5000, function()
          return notes[#notes] and notes[#notes]:find("cannot reload 'myplug'", 1, true)
        end, 10), "error not notified")
        local last = notes[#notes]
        assert(not last:find("_init_packages", 1, true), "Neovim's loader in: " .. last)
        assert(last:find("myplug/init.lua:1:", 1, true), "no file:line in: " .. last)
        assert(plug.greet() == "v2", "old code should keep running")
        local other = require "other"
        write(%q .. "/nvother/other.lua", "return { v = 2 }")
        vim.cmd("HotReload other")
        assert(other.v == 2, ":HotReload did not reload")
        hr.stop()
      end)
      write(out, ok and "ok" or tostring(err))
    ]]):format(repo, repo, h.root, plug, out, plugin, h.root))
    local status = h.sh(("timeout 60 nvim --headless -u NONE -c 'luafile %s' -c 'qa!' >/dev/null 2>&1")
      :format(script))
    assert.equal("ok", read(out), "nvim exit " .. status)
  end)
end)

describe("LÖVE", function()
  it("a game reloads a saved module through hotreload.love and shows errors on screen", function()
    if not host({ "love", "xvfb-run" }, "love xvfb xauth") then return end
    local game = h.root .. "/game"
    local mod = [[
      local M = { speed = %d }
      local ticks = 0
      function M.tick() %s ticks = ticks + 1 end
      function M.ticks() return ticks end
      function M.value() return %d end
      return M
    ]]
    h.write("game/mod.lua", mod:format(1, "", 1))
    -- required with a slash name, as many games do
    local util = "local U = {} function U.value() return %d end return U"
    h.write("game/lib/util.lua", util:format(1))
    h.write("game/conf.lua", [[
      function love.conf(t)
        t.window.width, t.window.height = 200, 100
        t.modules.audio, t.modules.sound, t.modules.joystick = false, false, false
      end
    ]])
    local out = h.root .. "/love.out"
    h.write("game/main.lua", WRITE .. ([[
      package.cpath = %q .. "/build/luajit/?.so;" .. package.cpath
      package.path = %q .. "/lua/?.lua;" .. package.path
      local game, out, mod, util = %q, %q, %q, %q
      RUNS = RUNS or { n = 0 } -- how often this top level ran (a table: a re-run counts)
      RUNS.n = RUNS.n + 1
      local hl = require "hotreload.love" -- first, as the README says: mod gets a base
      local M = require "mod"
      local U = require "lib/util"
      U.mark = "kept" -- runtime state
      local value = M.value
      local frame, phase, started = 0, 1, love.timer.getTime()
      local function finish(result) -- once; the next steps see the quit event
        if phase ~= "done" then write(out, result) end
        phase = "done"
        love.event.quit(0)
      end
      -- the checks run around each frame, also while the game is paused on an error
      local run = love.run
      love.run = function()
        local step = run()
        return function()
          frame = frame + 1
          if love.timer.getTime() - started > 20 then finish("timed out in phase " .. phase) end
          if phase == 1 and frame == 3 then
            write(game .. "/mod.lua", mod:format(2, "", 2))
            phase = 2
          elseif phase == 2 and M.value() == 2 then
            if value() ~= 2 then finish("old reference runs old code")
            elseif M.speed ~= 2 then finish("the edited constant did not apply")
            elseif M.ticks() < 2 then finish("state lost")
            else
              write(game .. "/mod.lua", "return {")
              phase = 3
            end
          elseif phase == 3 and #hl.errors > 0 then
            if not hl.errors[1]:find("mod", 1, true) then finish(hl.errors[1])
            else
              write(game .. "/mod.lua", mod:format(3, "error('tick broke')", 3))
              phase = 4
            end
          elseif phase == 4 and M.value() == 3 and #hl.errors > 0 then
            if not hl.errors[1]:find("tick broke", 1, true) then finish(hl.errors[1])
            else
              write(game .. "/mod.lua", mod:format(4, "", 4))
              phase = 5
            end
          elseif phase == 5 and M.value() == 4 and #hl.errors == 0 then
            phase, M.check = 6, M.ticks()
          elseif phase == 6 and M.ticks() > M.check then
            write(game .. "/lib/util.lua", util:format(2))
            phase = 7
          elseif phase == 7 and U.value() == 2 then
            if U.mark ~= "kept" then finish("the slash-named module lost its state") end
            -- main.lua saved: refused before it runs, the notice shown, the game goes on
            local f = assert(io.open(game .. "/main.lua", "rb"))
            local text = f:read("*a")
            f:close()
            write(game .. "/main.lua", text .. "\n-- saved again\n")
            phase = 8
          elseif phase == 8 and #hl.errors > 0 then
            if not hl.errors[1]:find("restart the game", 1, true) then finish(hl.errors[1])
            elseif RUNS.n ~= 1 then finish("main.lua ran " .. RUNS.n .. " times")
            else phase, M.check = 9, M.ticks() end
          elseif phase == 9 and M.ticks() > M.check + 2 then
            finish("ok")
          end
          return step()
        end
      end
      function love.update() M.tick() end
      function love.draw() love.graphics.print("frame " .. frame .. " phase " .. phase) end
      hl.setup{ dirs = { "." } }
    ]]):format(repo, repo, game, out, mod, util))
    local status = h.sh(("SDL_AUDIODRIVER=dummy timeout 60 xvfb-run -a love %s >/dev/null 2>&1")
      :format(game))
    assert.equal("ok", read(out), "love exit " .. status)
  end)
end)
