-- nginx under load with saves and without, measured in the same run (`make bench`, when
-- nginx with lua-nginx-module and ab are installed): two workers, 16 keep-alive clients on
-- loopback, ROUNDS rounds of SECONDS each way, in turn (about 40 s). Prints `make bench` table rows:
-- requests/s, p99 and longest request with a save every 100 ms ÷ without, and the longest
-- reload the workers logged (a reload may stall a worker for no longer than itself: the
-- longest request while saving should exceed the quiet one by no more than that).
--   luajit bench/servers.lua
package.path = "./?.lua;" .. package.path
local servers = require "spec.servers"
local lib = require "bench.lib"

local ROUNDS, SECONDS, CLIENTS, SAVE_EVERY = 5, 3, 16, 0.1

local server = servers.start("nginx", "build/luajit", "lua")
local ok, err = pcall(function()
  local version = 1
  local function run(saving)
    local ab = servers.load(server, 10000000, SECONDS, CLIENTS)
    while servers.running(ab) do
      if saving then
        version = version + 1
        servers.save(server, servers.app(version, "nginx"))
      end
      require("system").sleep(SAVE_EVERY)
    end
    local r = servers.finish(ab)
    assert(r.failed == 0 and r.non2xx == 0, r.text)
    return r
  end
  run(false) -- warm up
  local rps, p99, rps_saving, p99_saving, longest, longest_saving = {}, {}, {}, {}, {}, {}
  for i = 1, ROUNDS do
    local quiet, busy = run(false), run(true)
    rps[i], p99[i], rps_saving[i], p99_saving[i] = quiet.rps, quiet.p99, busy.rps, busy.p99
    longest[i], longest_saving[i] = quiet.max, busy.max
  end
  local reloads, slowest = 0, 0
  for ms in (servers.read(server.log) or ""):gmatch("reloaded app %(([%d.]+) ms%)") do
    reloads, slowest = reloads + 1, math.max(slowest, tonumber(ms))
  end
  local function row(figure, value, base, unit, fmt)
    print(("| nginx (luajit2) | %s | " .. fmt .. " %s | " .. fmt .. " %s | %.2f× |  |")
      :format(figure, value, unit, base, unit, value / base))
  end
  row(("requests/s, a save every %d ms vs none"):format(SAVE_EVERY * 1000),
    lib.median(rps_saving), lib.median(rps), "req/s", "%.0f")
  row("p99 latency, saving vs not", lib.median(p99_saving), lib.median(p99), "ms", "%.0f")
  row("longest request (median of the rounds), saving vs not", lib.median(longest_saving),
    lib.median(longest), "ms", "%.0f")
  print(("| nginx (luajit2) | longest of the %d reloads the workers logged | %.2f ms |  |  |  |")
    :format(reloads, slowest))
end)
servers.stop(server)
assert(ok, err)
