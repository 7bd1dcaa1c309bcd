--- hotreload.haproxy: live reloading for HAProxy's Lua (HAProxy 2.x; Debian 12's embeds
--- Lua 5.3, so use the lua53 build).
---
---   -- in the file `lua-load` (or `lua-load-per-thread`) names:
---   require("hotreload.haproxy").setup{ dirs = { "/etc/haproxy/lua" } }
---
--- Registers a task that polls every `interval` milliseconds; messages go to HAProxy's log
--- (`core.log`) and name the module. With `lua-load-per-thread`, each thread's Lua state
--- watches and reloads its own modules; one OS watcher serves them all.
local M = {}

--- Starts watching `opts.dirs` and registers the polling task: every `opts.interval`
--- milliseconds (default 20). `opts.verbose`: also log each reload at `info` level, naming
--- the modules. `opts.watch`: options for `hotreload.watch`. Call it from the file
--- `lua-load` names (the task is registered there). Returns the module. Raises on misuse.
function M.setup(opts)
  local helper = require "hotreload.helper"
  local interval
  opts, interval = helper.server_options(opts)
  local hotreload = require "hotreload"
  local reloaded = {}
  if opts.verbose then helper.listen(hotreload, reloaded, true) end
  helper.watch_all(hotreload, opts.dirs, opts.watch, function(e) core.log(core.err, e) end)
  core.register_task(function()
    while true do
      local _, errors = hotreload.poll()
      for _, e in ipairs(errors or {}) do core.log(core.err, e) end
      local text = helper.take(reloaded)
      if text then core.log(core.info, "hotreload: reloaded " .. text) end
      core.msleep(math.max(1, math.floor(interval)))
    end
  end)
  return M
end

return M
