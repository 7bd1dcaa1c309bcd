--- hotreload.nginx: live reloading for OpenResty and lua-nginx-module (LuaJIT build).
---
---   init_worker_by_lua_block {
---     require("hotreload.nginx").setup{ dirs = { "/srv/app/lua" } }
---   }
---
--- Each worker process (and the privileged agent) watches the directories and polls on an
--- `ngx.timer.every`; messages go to the error log and name the module. With `patches`, the
--- workers also apply patches posted into a `lua_shared_dict` (see `M.post`), so one request
--- patches every worker.
local M = {}

local hotreload -- required in setup: this file is also read where the module is not built

local reloaded = {} -- names of the modules reloaded since the last message (verbose)

--- The process types that reload: the workers serve requests, the privileged agent may run
--- Lua too; the cache manager and loader ("helper") run none of the program's modules.
local RELOADING = { worker = true, single = true, ["privileged agent"] = true }

local function process_type()
  local ok, process = pcall(require, "ngx.process")
  return ok and process.type() or "worker"
end

--- Applies the patches posted into the shared dict `dict` since this worker's last look:
--- each is `reload(name, { source = text })`; a patch that fails is refused (the module
--- keeps its code) and logged, in every worker alike.
local function apply_patches(dict, state, verbose)
  local last = dict:get("hotreload:version") or 0
  while state.applied < last do
    local n = state.applied + 1
    local name, source = dict:get("hotreload:name:" .. n), dict:get("hotreload:source:" .. n)
    state.applied = n
    if name and source then
      local ok, err = hotreload.reload(name, { source = source, chunkname = "=patch " .. n })
      if ok == nil then
        ngx.log(ngx.ERR, "hotreload: patch ", n, " refused: ", (err:gsub("^hotreload: ", "")))
      elseif verbose then
        ngx.log(ngx.NOTICE, "hotreload: patch ", n, " applied to ", name)
      end
    end
  end
end

--- Posts a patch for every worker (from any request handler): module `name` reloads from
--- `source` at each worker's next poll. Returns the patch number, or `nil, message` (the
--- dict is full). The patches stay in the dict, so a worker started later applies them too.
function M.post(dict_name, name, source)
  assert(type(name) == "string" and type(source) == "string", "name and source expected")
  local dict = assert(ngx.shared[dict_name], "no lua_shared_dict " .. tostring(dict_name))
  local n, err = dict:incr("hotreload:version", 1, 0)
  if not n then return nil, err end
  local ok, set_err = dict:safe_set("hotreload:source:" .. n, source)
  if ok then ok, set_err = dict:safe_set("hotreload:name:" .. n, name) end
  if not ok then return nil, set_err end
  return n
end

--- Starts watching `opts.dirs` and polling every `opts.interval` milliseconds (default 20)
--- in this worker. Call it from `init_worker_by_lua*`: in `init_by_lua*` the master would
--- start the watch before it forks the workers, and threads do not survive a fork.
---
--- - `opts.verbose`: also log each reload at `notice` level, naming the modules.
--- - `opts.patches`: the name of a `lua_shared_dict` to apply posted patches from.
--- - `opts.watch`: options for `hotreload.watch` (`pattern`, `ignore`, `poll_ms`, ...).
---
--- Does nothing in processes that run no requests (cache manager and loader). Returns the
--- module. Raises on misuse.
function M.setup(opts)
  local helper = require "hotreload.helper"
  local interval
  opts, interval = helper.server_options(opts)
  if ngx.get_phase() == "init" then
    error("hotreload.nginx: call setup from init_worker_by_lua*, not init_by_lua*", 2)
  end
  if not RELOADING[process_type()] then return M end
  hotreload = require "hotreload"
  local dict
  if opts.patches then
    dict = assert(ngx.shared[opts.patches], "no lua_shared_dict " .. tostring(opts.patches))
  end
  if opts.verbose then helper.listen(hotreload, reloaded, true) end
  helper.watch_all(hotreload, opts.dirs, opts.watch, function(e) ngx.log(ngx.ERR, e) end)
  local patches = { applied = 0 }
  local ok, err = ngx.timer.every(interval / 1000, function(premature)
    if premature then return end
    if dict then apply_patches(dict, patches, opts.verbose) end
    local _, errors = hotreload.poll()
    for _, e in ipairs(errors or {}) do ngx.log(ngx.ERR, e) end
    local text = helper.take(reloaded)
    if text then ngx.log(ngx.NOTICE, "hotreload: reloaded ", text) end
  end)
  if not ok then ngx.log(ngx.ERR, "hotreload: cannot start the poll timer: ", err) end
  return M
end

return M
