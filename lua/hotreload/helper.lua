--- hotreload.helper: what the host helpers (`hotreload.love`, `.nvim`, `.nginx`, `.haproxy`)
--- share. Not part of the API.
local M = {}

--- One reload, for a verbose message: `game: update, draw`, with `report.seconds` too when
--- `timed` (`game (0.41 ms): update, draw`).
function M.describe(name, report, timed)
  local text = timed and ("%s (%.2f ms)"):format(name, report.seconds * 1e3) or name
  if report.changed and #report.changed > 0 then
    text = text .. ": " .. table.concat(report.changed, ", ")
  end
  return text
end

--- Verbose mode: names what each reload changed (`hotreload.defaults.changes`) and appends
--- each reload's description to `list`. Returns the listener's remover.
function M.listen(hotreload, list, timed)
  hotreload.defaults.changes = true
  return hotreload.on_reload(function(name, _, report)
    list[#list + 1] = M.describe(name, report, timed)
  end)
end

--- The descriptions `listen` gathered in `list`, joined with "; ", and `list` emptied in place
--- (the listener keeps filling that very table); nil if there were none.
function M.take(list)
  if #list == 0 then return nil end
  local text = table.concat(list, "; ")
  for i = #list, 1, -1 do list[i] = nil end
  return text
end

--- Checks a server helper's `setup` options (a table; `dirs` a list; `interval` positive
--- milliseconds, default 20): returns them and the interval, or raises.
function M.server_options(opts)
  opts = opts or {}
  assert(type(opts) == "table", "setup expects a table")
  assert(type(opts.dirs or {}) == "table", "dirs: a list of directories expected")
  local interval = opts.interval or 20
  assert(type(interval) == "number" and interval > 0, "interval: milliseconds expected")
  return opts, interval
end

--- Watches each directory of `dirs` with `opts`; a failure goes to `fail(message)`.
--- Returns the watchers.
function M.watch_all(hotreload, dirs, opts, fail)
  local watchers = {}
  for _, dir in ipairs(dirs or {}) do
    local w, err = hotreload.watch(dir, opts)
    if w then watchers[#watchers + 1] = w else fail(err) end
  end
  return watchers
end

return M
