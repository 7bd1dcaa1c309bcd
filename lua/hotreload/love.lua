--- hotreload.love: live reloading for a LÖVE game (with the LuaJIT build of hotreload).
---
---   local hl = require "hotreload.love"   -- first line of main.lua: every module the game
---                                         -- requires after it gets a merge base
---   ...
---   hl.setup{ dirs = { "." } }             -- after love.run, if the game defines its own
---
--- Every frame, before the game's own step, saved files are reloaded (`hotreload.poll`).
--- A module that fails to reload, or a game callback that raises after a reload, does not
--- crash the game: the message is drawn over it, the old code keeps running (callbacks pause
--- after a raise), and the next successful reload of that module clears its message (like
--- lurker). Only folders can be watched (not a `.love` archive). main.lua and conf.lua are
--- not reloaded: they set the game up once; restart the game for them.
local hotreload = require "hotreload"
local utf8 = require "utf8"

local M = {
  --- Messages being shown, in order (emptied in place, so a reference stays valid).
  errors = {},
  --- Watcher handles of the watched directories.
  watchers = {},
  --- Modules reloaded since setup.
  reloaded = 0,
}

local by_key = {} -- module name or "love.<callback>" -> message
local order = {} -- keys in the order their messages appeared
local failed = false -- a callback raised: callbacks pause until the next good reload
local catch = true -- setup's `protect` option
local started = false
local protected = setmetatable({}, { __mode = "k" }) -- our wrappers

--- Text LÖVE can draw: invalid UTF-8 bytes (a binary file name, a cut chunk name) become "?".
local function printable(text)
  if utf8.len(text) then return text end
  local out, i = {}, 1
  while i <= #text do
    local ok, n = pcall(utf8.len, text, i, i)
    local len = 1
    if ok and n == 1 then
      local b = text:byte(i)
      len = b >= 240 and 4 or b >= 224 and 3 or b >= 192 and 2 or 1
      out[#out + 1] = text:sub(i, i + len - 1)
    else
      out[#out + 1] = "?"
    end
    i = i + len
  end
  return table.concat(out)
end

local function refresh()
  for i = #M.errors, 1, -1 do M.errors[i] = nil end
  for _, key in ipairs(order) do M.errors[#M.errors + 1] = by_key[key] end
end

local function report(key, message)
  if by_key[key] == nil then order[#order + 1] = key end
  by_key[key] = printable(message)
  refresh()
  print(message)
end

local function clear(key)
  if by_key[key] == nil then return end
  by_key[key] = nil
  for i, k in ipairs(order) do
    if k == key then table.remove(order, i) break end
  end
  refresh()
end

local function clear_callbacks()
  for i = #order, 1, -1 do
    if order[i]:sub(1, 5) == "love." then clear(order[i]) end
  end
  failed = false
end

--- Applies saved files now (called every frame once set up). Returns `poll`'s results.
function M.poll()
  local n, errors = hotreload.poll()
  M.reloaded = M.reloaded + n
  for _, e in ipairs(errors or {}) do
    report(e:match("cannot reload '([^']+)'") or e, e)
  end
  return n, errors
end

--- Draws the messages over the game.
function M.draw_errors()
  local g = love.graphics
  g.push("all")
  g.origin()
  g.setColor(0, 0, 0, 0.8)
  g.rectangle("fill", 0, 0, g.getWidth(), g.getHeight())
  g.setColor(1, 0.4, 0.4, 1)
  g.printf(table.concat(M.errors, "\n\n"), 16, 16, g.getWidth() - 32)
  g.pop()
end

--- After a draw that raised: leave the graphics state as `present` needs it.
local function reset_graphics()
  local g = love.graphics
  g.setCanvas()
  g.setShader()
  while g.getStackDepth() > 0 do g.pop() end
end

--- Wraps the game's callback `name` (once): a raise pauses the game and shows the error;
--- the draw callback also draws the messages.
local function protect(name)
  local f = love[name]
  if type(f) ~= "function" or protected[f] then return end
  local function wrapper(...)
    if not failed then
      if catch then
        local ok, err = xpcall(f, debug.traceback, ...)
        if not ok then
          failed = true
          if name == "draw" then reset_graphics() end
          report("love." .. name, "hotreload.love: love." .. name
            .. " failed (fix and save to go on):\n" .. tostring(err))
        end
      else
        f(...)
      end
    end
    if name == "draw" and #M.errors > 0 then pcall(M.draw_errors) end
  end
  protected[wrapper] = true
  love[name] = wrapper
end

--- Before each frame: poll, and (re)wrap the callbacks the game set since.
local function before_frame()
  M.poll()
  if love.draw == nil then love.draw = function() end end
  protect("update")
  protect("draw")
  for name in pairs(love.handlers or {}) do
    if name ~= "quit" then protect(name) end
  end
end

--- The folders where `require` finds the game's modules, as package.path entries, so that
--- hotreload maps saved files to module names (LÖVE's own searcher loads them).
local function require_path(source)
  local entries = {}
  local templates = love.filesystem.getRequirePath and love.filesystem.getRequirePath()
    or "?.lua;?/init.lua"
  for template in templates:gmatch("[^;]+") do
    entries[#entries + 1] = source .. "/" .. template
  end
  return table.concat(entries, ";")
end

-- From the first require on: the game's folders are on package.path (so that hotreload maps
-- a saved file to the modules loaded from it, also those required before `setup`), and
-- main.lua and conf.lua, which set the game up once, are never run again: a save of either
-- shows that the game must restart, and runs nothing.
if love and love.filesystem and love.filesystem.getSource then
  package.path = require_path(love.filesystem.getSource()) .. ";" .. package.path
end
for _, name in ipairs({ "main", "conf" }) do
  hotreload.pin(name, name .. ".lua sets the game up once: restart the game to apply it")
end

--- Starts watching. `opts.dirs`: folders to watch, relative to the game's folder (default:
--- the game's folder). `opts.protect` (default true): catch errors of callbacks.
--- `opts.verbose`: print each reload and what it changed (`reloaded game: update, draw`,
--- with `hotreload.defaults.changes` on). Calling it
--- again does nothing. Raises on misuse; a folder that cannot be watched is shown like a
--- reload error.
function M.setup(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("bad argument #1 to 'setup' (table expected, got " .. type(opts) .. ")", 2)
  end
  local dirs = opts.dirs or { "." }
  if type(dirs) ~= "table" then error("bad option 'dirs' to 'setup' (table expected)", 2) end
  if started then return M end
  started = true
  catch = opts.protect ~= false
  local source = love.filesystem.getSource()
  for _, dir in ipairs(dirs) do
    local path = dir:sub(1, 1) == "/" and dir or source .. "/" .. dir
    -- LÖVE's own searcher, before the standard one, loads the game's files: a file compiled
    -- ahead would never be used (docs/api.md, Compiling ahead)
    local w, err = hotreload.watch(path, { compile_ahead = false })
    if w then M.watchers[#M.watchers + 1] = w else report(path, err) end
  end
  if opts.verbose then hotreload.defaults.changes = true end
  hotreload.on_reload(function(name, _, r)
    clear(name)
    clear_callbacks() -- new code: let the callbacks run again
    if opts.verbose then print("hotreload: reloaded " .. require("hotreload.helper").describe(name, r)) end
  end)
  local run = love.run
  love.run = function()
    local step = run()
    return function()
      before_frame()
      return step()
    end
  end
  return M
end

return M
