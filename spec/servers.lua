-- Real servers for the end-to-end specs and the server bench: nginx with lua-nginx-module
-- (two workers, OpenResty's LuaJIT) and HAProxy (two threads, a Lua 5.3 state each), each
-- serving `app.lua` from a scratch directory on a loopback port, with hotreload's helper
-- polling. Everything a worker reads is copied into the scratch directory, which is
-- world-readable: nginx's workers run as another user.
local system = require "system"

local servers = {}

local function sh(cmd)
  local ok, how, code = os.execute(cmd)
  if type(ok) == "number" then return ok / 256 end
  return how == "exit" and code or 128 + code
end
servers.sh = sh

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end
servers.read = read

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  assert(f:write(text))
  assert(f:close())
  assert(sh(("chmod 644 '%s'"):format(path)) == 0)
end
servers.write = write

local function copy(from, to)
  assert(sh(("cp '%s' '%s' && chmod 644 '%s'"):format(from, to, to)) == 0, "cannot copy " .. from)
end

--- Calls `cond` until it returns a true value or `timeout` seconds (default 10) pass.
function servers.wait_until(cond, timeout)
  local deadline = system.monotime() + (timeout or 10)
  repeat
    local v = cond()
    if v then return v end
    system.sleep(0.005)
  until system.monotime() > deadline
  return false
end

--- The body of a GET of `path` on the server, or nil. `server.answered` counts the
--- answers, so that the requests the app served are known.
function servers.get(server, path)
  local p = io.popen(("curl -s -m 5 'http://127.0.0.1:%d%s'"):format(server.port, path or "/"))
  local body = p:read("*a")
  p:close()
  if body == "" then return nil end
  server.answered = (server.answered or 0) + 1
  return body
end

--- POSTs `body` to `path`; returns the response body.
function servers.post(server, path, body)
  local file = server.dir .. "/post.body"
  write(file, body)
  local p = io.popen(("curl -s -m 5 --data-binary @'%s' 'http://127.0.0.1:%d%s'")
    :format(file, server.port, path))
  local out = p:read("*a")
  p:close()
  return out
end

--- The app every server runs: a per-worker hit counter (state) and a version, in a response
--- of fixed length, so that `ab` counts any other length as a failure.
function servers.app(version, kind)
  local who = kind == "nginx" and "ngx.worker.pid()" or "core.thread or 0"
  local send = kind == "nginx" and "ngx.print(body)" or [[
  applet:set_status(200)
  applet:add_header("content-length", tostring(#body))
  applet:add_header("content-type", "text/plain")
  applet:start_response()
  applet:send(body)]]
  return ([[
local M = { hits = 0 }
local VERSION = %d
function M.serve(applet)
  M.hits = M.hits + 1
  local body = ("v=%%03d who=%%07d hits=%%09d\n"):format(VERSION, %s, M.hits)
%s
end
return M
]]):format(version, who, send)
end

--- Parses a response body: version, worker (pid or thread), hits.
function servers.parse(body)
  local v, who, hits = (body or ""):match("^v=(%d+) who=(%d+) hits=(%d+)")
  if not v then return nil end
  return tonumber(v), tonumber(who), tonumber(hits)
end

local function scratch(kind)
  local dir = (os.getenv("TMPDIR") or "/tmp") .. "/hotreload-" .. kind .. "-" .. os.time() .. "-"
    .. tostring(math.random(1, 1e9))
  assert(sh(("mkdir -p '%s/lua/hotreload' '%s/lib' '%s/logs' && chmod -R 755 '%s'")
    :format(dir, dir, dir, dir)) == 0)
  return dir
end

math.randomseed(os.time() + math.floor(os.clock() * 1e6))

--- A port to try: below Linux's ephemeral range (32768 on), which clients' sockets use.
local function free_port()
  return math.random(10000, 32000)
end

local NGINX_CONF = [[
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 2;
error_log %s/logs/error.log notice;
pid %s/logs/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %s/logs/body;
  lua_package_path "%s/lua/?.lua;;";
  lua_package_cpath "%s/lib/?.so;;";
  lua_shared_dict patches 1m;
  init_worker_by_lua_block {
    require("hotreload.nginx").setup{ dirs = { "%s/lua" }, patches = "patches", verbose = true }
  }
  server {
    listen 127.0.0.1:%d reuseport;
    keepalive_requests 100000;
    location / { content_by_lua_block { require("app").serve() } }
    location = /_patch {
      content_by_lua_block {
        ngx.req.read_body()
        local n, err = require("hotreload.nginx").post("patches", ngx.var.arg_module,
          ngx.req.get_body_data())
        ngx.say(n or err)
      }
    }
  }
}
]]

local HAPROXY_CFG = [[
global
  nbthread 2
  log stderr format raw local0 info
  lua-load-per-thread %s/init.lua
defaults
  mode http
  log global
  timeout client 10s
  timeout server 10s
  timeout connect 5s
frontend web
  bind 127.0.0.1:%d
  http-request use-service lua.app
]]

local HAPROXY_INIT = [[
package.path = "%s/lua/?.lua;" .. package.path
package.cpath = "%s/lib/?.so;" .. package.cpath
require("hotreload.haproxy").setup{ dirs = { "%s/lua" }, verbose = true }
core.register_service("app", "http", function(applet) require("app").serve(applet) end)
]]

--- Starts a server of `kind` ("nginx" or "haproxy") with the module built in `so_dir`
--- (build/luajit or build/lua53) and the helpers in `lua_dir`; returns it once it answers.
function servers.start(kind, so_dir, lua_dir)
  local dir = scratch(kind)
  copy(so_dir .. "/hotreload.so", dir .. "/lib/hotreload.so")
  for _, helper in ipairs({ kind, "helper" }) do
    copy(("%s/hotreload/%s.lua"):format(lua_dir, helper), ("%s/lua/hotreload/%s.lua"):format(dir, helper))
  end
  write(dir .. "/lua/app.lua", servers.app(1, kind))
  for _ = 1, 5 do
    local server = { kind = kind, dir = dir, port = free_port(), log = dir .. "/logs/error.log" }
    if kind == "nginx" then
      write(dir .. "/nginx.conf", NGINX_CONF:format(dir, dir, dir, dir, dir, dir, server.port))
      sh(("nginx -p '%s' -c '%s/nginx.conf' -g 'daemon off;' >'%s/logs/stdout' 2>&1 &")
        :format(dir, dir, dir))
    else
      write(dir .. "/init.lua", HAPROXY_INIT:format(dir, dir, dir))
      write(dir .. "/haproxy.cfg", HAPROXY_CFG:format(dir, server.port))
      sh(("haproxy -f '%s/haproxy.cfg' -db >'%s' 2>&1 & echo $! >'%s/logs/haproxy.pid'")
        :format(dir, server.log, dir))
    end
    if servers.wait_until(function() return servers.parse(servers.get(server, "/")) end, 5) then
      server.pid = tonumber(read(dir .. "/logs/" .. kind .. ".pid"))
      return server
    end
    servers.kill(server) -- the port was taken, most likely: another one
  end
  error(kind .. " did not start: " .. (read(dir .. "/logs/error.log") or "")
    .. (read(dir .. "/logs/stdout") or ""))
end

--- The pids of the server's worker processes (nginx) or of the process (HAProxy).
function servers.workers(server)
  local p = io.popen(server.kind == "nginx" and ("pgrep -P %d | sort"):format(server.pid or 0)
    or ("echo %d"):format(server.pid or 0))
  local out = p:read("*a")
  p:close()
  return out
end

--- Stops the server's process, if it runs.
function servers.kill(server)
  local pid = server.pid or tonumber(read(server.dir .. "/logs/" .. server.kind .. ".pid") or "")
  if pid then
    sh(("kill %d 2>/dev/null"):format(pid))
    servers.wait_until(function() return sh(("kill -0 %d 2>/dev/null"):format(pid)) ~= 0 end, 10)
  end
end

--- Stops the server and removes its directory.
function servers.stop(server)
  servers.kill(server)
  sh(("rm -rf '%s'"):format(server.dir))
end

--- Saves `source` as the app's new version (a rename save, as editors do).
function servers.save(server, source)
  local tmp = server.dir .. "/lua/.app.lua.tmp"
  write(tmp, source)
  assert(os.rename(tmp, server.dir .. "/lua/app.lua"))
end

--- Requests until every one of the `n` workers answered (with `want_version`, if given);
--- returns worker -> {version, hits} (each worker's last answer), or nil at the deadline.
function servers.survey(server, n, want_version)
  local seen, count = {}, 0
  local ok = servers.wait_until(function()
    local v, who, hits = servers.parse(servers.get(server, "/"))
    if v then
      if not want_version or v == want_version then
        if not seen[who] then count = count + 1 end
        seen[who] = { version = v, hits = hits }
      end
    end
    return count >= n
  end, 20)
  return ok and seen or nil
end

--- Starts `ab` against the server in the background: at most `n` requests and `seconds`
--- seconds, `c` at a time, keep-alive.
function servers.load(server, n, seconds, c)
  local out = server.dir .. "/logs/ab.out"
  sh(("ab -q -k -c %d -n %d -t %d 'http://127.0.0.1:%d/' >'%s' 2>&1 & echo $! >'%s.pid'")
    :format(c, n, seconds, server.port, out, out))
  return { out = out, pid = tonumber(read(out .. ".pid")) }
end

--- Whether the `ab` run is still going.
function servers.running(run)
  return sh(("kill -0 %d 2>/dev/null"):format(run.pid)) == 0
end

--- Waits for `ab` to finish; returns its figures: complete, failed, non2xx, rps, p99 (ms).
function servers.finish(run)
  assert(servers.wait_until(function() return not servers.running(run) end, 120),
    "ab did not finish")
  local out = read(run.out) or ""
  return {
    complete = tonumber(out:match("Complete requests:%s+(%d+)")),
    failed = tonumber(out:match("Failed requests:%s+(%d+)")),
    non2xx = tonumber(out:match("Non%-2xx responses:%s+(%d+)") or "0"),
    rps = tonumber(out:match("Requests per second:%s+([%d.]+)")),
    p99 = tonumber(out:match("%s99%%%s+(%d+)")),
    max = tonumber(out:match("100%%%s+(%d+)")),
    text = out,
  }
end

--- Whether `pattern` (plain) occurs at least `n` times in the server's log.
function servers.logged(server, pattern, n)
  local log = read(server.log) or ""
  local count, at = 0, 1
  while true do
    local i = log:find(pattern, at, true)
    if not i then break end
    count, at = count + 1, i + 1
  end
  return count >= (n or 1), count
end

return servers
