-- End to end on real servers under load (`make test-servers`, which needs nginx with
-- lua-nginx-module, HAProxy, ab and curl): while `ab` sends a bounded number of keep-alive
-- requests on loopback, the app is saved again and again, once with a syntax error. No
-- request may fail, no worker may die, each worker's state must survive every reload, every
-- worker must end on the last version, and the syntax error must be logged by each.
local servers = require "spec.servers"

local SO = { nginx = os.getenv("HOTRELOAD_NGINX_SO") or "build/luajit",
  haproxy = os.getenv("HOTRELOAD_HAPROXY_SO") or "build/lua53" }
-- ab runs for SECONDS (at most REQUESTS requests): the saves all happen while it runs
local REQUESTS, SECONDS, CONCURRENCY, WORKERS = 1000000, 4, 16, 2

local function under_load(kind)
  local server = servers.start(kind, SO[kind], "lua")
  finally(function() servers.stop(server) end)
  local workers = servers.workers(server)
  local function survey(version) return servers.survey(server, WORKERS, version) end
  assert(survey(1), "the workers never answered")

  local run = servers.load(server, REQUESTS, SECONDS, CONCURRENCY)
  for version = 2, 7 do
    if version == 5 then
      servers.save(server, "local M = { hits = 0 }\nfunction M.serve(\nreturn M\n")
      assert(servers.wait_until(function()
        return servers.logged(server, "cannot reload 'app'", WORKERS)
      end), "the syntax error was not logged by every worker")
    end
    servers.save(server, servers.app(version, kind))
    assert(survey(version), "not every worker took version " .. version)
  end
  assert.is_true(servers.running(run), "the saves outlasted the load: lengthen it")
  local ab = servers.finish(run)
  assert.is_true(ab.complete > 0, ab.text)
  assert.equal(0, ab.failed, ab.text)
  assert.equal(0, ab.non2xx, ab.text)

  -- every worker on the last version, alive, with every request it served counted
  local seen = assert(survey(7), "not every worker serves the last version")
  assert.equal(workers, servers.workers(server), "a worker was restarted")
  local counted = 0
  for _, w in pairs(seen) do counted = counted + w.hits end
  assert.equal(ab.complete + server.answered, counted, "hits were lost: a reload reset the state")
  assert.is_true((servers.logged(server, "app.lua:")), "the error does not name file:line")
  -- verbose: every reload is logged, not only each worker's first
  local _, logged = servers.logged(server, "reloaded app", 1)
  assert.is_true(logged >= 2 * WORKERS, ("%d reloads logged"):format(logged))
  assert.is_false((servers.logged(server, "exited on signal")))
  return server, seen
end

describe("nginx (lua-nginx-module, OpenResty's LuaJIT), two workers", function()
  it("reloads under load: no failed request, state kept, every worker on the last version",
    function() under_load("nginx") end)

  it("applies a patch posted once in every worker, and refuses a broken one in every worker",
    function()
      local server = servers.start("nginx", SO.nginx, "lua")
      finally(function() servers.stop(server) end)
      assert(servers.survey(server, WORKERS, 1))
      assert.equal("1\n", servers.post(server, "/_patch?module=app", servers.app(42, "nginx")))
      assert(servers.survey(server, WORKERS, 42), "not every worker applied the patch")
      assert.equal("2\n", servers.post(server, "/_patch?module=app", "return {"))
      assert(servers.wait_until(function()
        return servers.logged(server, "patch 2 refused: cannot reload 'app'", WORKERS)
      end), "the broken patch was not refused and logged by every worker")
      local seen = assert(servers.survey(server, WORKERS, 42), "a worker lost the good patch")
      for _, w in pairs(seen) do assert.equal(42, w.version) end
    end)
end)

describe("HAProxy (Lua 5.3), two threads with a Lua state each", function()
  it("reloads under load: no failed request, state kept, every thread on the last version",
    function() under_load("haproxy") end)
end)
