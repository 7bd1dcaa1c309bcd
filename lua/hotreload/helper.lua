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
