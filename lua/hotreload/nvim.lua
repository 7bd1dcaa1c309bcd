--- hotreload.nvim: live reloading for Neovim plugin authors (Neovim 0.7+).
---
---   require("hotreload.nvim").setup{ dirs = { "~/src/myplugin" } }
---
--- Watches the plugin directories, polls on a libuv timer (on the main loop, scheduled), and
--- reports through `vim.notify`. `:HotReload {module}` reloads one module by hand.
local hotreload = require "hotreload"

local M = { watchers = {}, timer = nil }

local reloaded = {} -- names of the modules reloaded since the last notice (verbose)
local stop_listening = nil

local function notify(message, level)
  vim.notify(message, level or vim.log.levels.INFO, { title = "hotreload" })
end

--- A reload error as the user wants to read it: Neovim's runtimepath searcher raises a
--- syntax error from its own line (`vim/_init_packages.lua:24: /path/x.lua:8: ...`); the
--- module's file:line is what matters.
local function readable(message)
  return (message:gsub("[^%s']*vim/_init_packages%.lua:%d+: ", ""))
end

--- Puts the plugin's modules on package.path, so that files map to module names: a plugin
--- root with a `lua/` folder maps `lua/x/y.lua` to `x.y`; any other directory maps its own
--- files.
local function add_to_path(dir)
  local plugin = vim.fn.isdirectory(dir .. "/lua") == 1
  local root = plugin and dir .. "/lua" or dir
  local entries = root .. "/?.lua;" .. root .. "/?/init.lua;"
  if not package.path:find(entries, 1, true) then package.path = entries .. package.path end
  -- Neovim's own searcher (runtimepath) comes before package.path: put the plugin first
  -- there too, or a copy installed elsewhere would be the one reloaded
  if plugin then vim.opt.rtp:prepend(dir) end
end

--- Applies saved files now; notifies what happened. Returns `poll`'s results.
function M.poll()
  local n, errors = hotreload.poll()
  local text = require("hotreload.helper").take(reloaded)
  if text then notify("reloaded " .. text) end
  for _, e in ipairs(errors or {}) do notify(readable(e), vim.log.levels.ERROR) end
  return n, errors
end

--- `:HotReload {module}`
local function command(args)
  local name = args.args
  local module, err = hotreload.reload(name)
  if module == nil then
    notify(readable(err), vim.log.levels.ERROR)
  else
    notify(("reloaded '%s'"):format(name))
  end
end

local function loaded_names(prefix)
  local names = {}
  for name in pairs(package.loaded) do
    if type(name) == "string" and name:sub(1, #prefix) == prefix then names[#names + 1] = name end
  end
  table.sort(names)
  return names
end

--- Starts watching `opts.dirs` (list of directories; `~` expanded) and polling every
--- `opts.interval` milliseconds (default 100). `opts.verbose`: also notify successful
--- reloads. Calling it again restarts with the new options. Raises on misuse.
function M.setup(opts)
  opts = opts or {}
  vim.validate({ opts = { opts, "table" }, dirs = { opts.dirs, "table" },
    interval = { opts.interval, function(v) return v == nil or (type(v) == "number" and v >= 1) end,
      "a number of milliseconds, at least 1" } })
  M.stop()
  M.verbose = opts.verbose
  if M.verbose then stop_listening = require("hotreload.helper").listen(hotreload, reloaded) end
  for _, dir in ipairs(opts.dirs) do
    local path = vim.fn.fnamemodify(vim.fn.expand(dir), ":p"):gsub("/$", "")
    add_to_path(path)
    -- Neovim's loader, before the standard searcher, loads runtimepath modules: a file compiled
    -- ahead would never be used (docs/api.md, Compiling ahead)
    local w, err = hotreload.watch(path, { compile_ahead = false })
    if w then M.watchers[#M.watchers + 1] = w else notify(err, vim.log.levels.ERROR) end
  end
  local interval = opts.interval or 100
  M.timer = vim.loop.new_timer()
  M.timer:start(interval, interval, vim.schedule_wrap(function()
    if M.timer then M.poll() end
  end))
  vim.api.nvim_create_user_command("HotReload", command, {
    nargs = 1,
    complete = function(lead) return loaded_names(lead) end,
    desc = "Reload a Lua module, keeping its state (hotreload)",
  })
  return M
end

--- Stops the timer and the watchers.
function M.stop()
  if M.timer then
    M.timer:stop()
    M.timer:close()
    M.timer = nil
  end
  for _, w in ipairs(M.watchers) do w:close() end
  M.watchers = {}
  if stop_listening then stop_listening() end
  stop_listening, reloaded = nil, {}
end

return M
