--- hotreload.love: live reloading for a LÖVE game in one line.
---
---   require("hotreload.love").setup{ dirs = { "." } }   -- at the end of main.lua
---
--- Every frame, before the game's own step, saved files are reloaded (`hotreload.poll`).
--- A file that fails to reload, or a game callback that raises after a reload, does not crash
--- the game: the message is drawn over the game, the old code keeps running, and the next
--- successful reload clears it (like lurker). Only directories of a game run from a folder
--- can be watched (not a `.love` archive).
local hotreload = require "hotreload"

local M = {
  --- Messages being shown: reload errors and the error of a callback that raised.
  errors = {},
  --- Watcher handles of the watched directories.
  watchers = {},
  --- Modules reloaded since setup.
  reloaded = 0,
}

local CALLBACKS = { "update", "draw", "keypressed", "keyreleased", "mousepressed",
  "mousereleased", "mousemoved", "wheelmoved", "textinput", "resize" }

local protected = setmetatable({}, { __mode = "k" }) -- our wrappers
local failed = false -- a callback raised: the game is paused until the next reload

local function report(message)
  M.errors[#M.errors + 1] = message
  print(message)
end

--- Applies saved files now (called every frame once set up). Returns `poll`'s results.
function M.poll()
  local n, errors = hotreload.poll()
  if n > 0 and not errors then
    M.errors, failed = {}, false
  end
  M.reloaded = M.reloaded + n
  if errors then
    for _, e in ipairs(errors) do report(e) end
  end
  return n, errors
end

--- Wraps the game's callback `name` (once): a raise pauses the game and shows the error.
local function protect(name)
  local f = love[name]
  if type(f) ~= "function" or protected[f] then return end
  local function wrapper(...)
    if failed and name ~= "draw" then return end
    if not failed then
      local ok, err = xpcall(f, debug.traceback, ...)
      if not ok then
        failed = true
        report("hotreload.love: love." .. name .. " failed (fix and save to go on):\n" .. err)
      end
    end
    if name == "draw" and #M.errors > 0 then M.draw_errors() end
  end
  protected[wrapper] = true
  love[name] = wrapper
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

--- Before each frame: poll, and (re)wrap the callbacks the game set since.
local function before_frame()
  M.poll()
  for _, name in ipairs(CALLBACKS) do protect(name) end
  if love.draw == nil then
    love.draw = function() end
    protect("draw")
  end
end

--- Starts watching. `opts.dirs`: directories to watch, relative to the game's folder
--- (default: the game's folder). `opts.protect` (default true): catch errors of callbacks.
--- Raises on misuse; a directory that cannot be watched is shown like a reload error.
function M.setup(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("bad argument #1 to 'setup' (table expected, got " .. type(opts) .. ")", 2)
  end
  local source = love.filesystem.getSource()
  local dirs = opts.dirs or { "." }
  if type(dirs) ~= "table" then error("bad option 'dirs' to 'setup' (table expected)", 2) end
  -- game modules load through LÖVE's own searcher; hotreload maps files to modules through
  -- package.path, so the game's folder goes there too
  package.path = source .. "/?.lua;" .. source .. "/?/init.lua;" .. package.path
  for _, dir in ipairs(dirs) do
    local path = dir:sub(1, 1) == "/" and dir or source .. "/" .. dir
    local w, err = hotreload.watch(path)
    if w then M.watchers[#M.watchers + 1] = w else report(err) end
  end
  local run = love.run
  love.run = function()
    local step = run()
    return function()
      before_frame()
      return step()
    end
  end
  if opts.protect == false then
    protect = function() end
  end
  return M
end

return M
