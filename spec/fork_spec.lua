-- A process forked from one that was watching (a server's master that called `watch` before
-- forking its workers) has the watches in memory but none of the threads behind them. There,
-- closing an inherited watch (or the state) must not wait on a thread that is not there, and
-- a new watch must start the process's own threads. LuaJIT only: the spec forks through ffi.
local h = require "spec.helpers"
local lfs = require "lfs"

teardown(h.cleanup)

local dirs = 0

-- The script run in a child interpreter: it watches `dir` twice, forks, and in the fork closes
-- one inherited watch, watches again, reloads a save, closes the other inherited watch after
-- that, and ends with `os.exit(code, true)`, which closes the state (and so collects
-- whatever is still open); the parent then reloads a save of its own. Prints what it saw.
local script = [=[
local dir, ahead = arg[1], arg[2] == "true"
local ffi = require "ffi"
ffi.cdef [[int fork(void); int waitpid(int pid, int *status, int options);]]
local hotreload = require "hotreload"
package.path = dir .. "/?.lua;" .. package.path
local function save(v)
  local f = assert(io.open(dir .. "/forked.lua", "w"))
  assert(f:write(("return { v = function() return %d end }\n"):format(v)))
  assert(f:close())
end
local function reloaded(M, v)
  local deadline = os.time() + 10
  repeat
    local _, errors = hotreload.poll()
    assert(not errors, errors and errors[1])
  until M.v() == v or os.time() > deadline
  assert(M.v() == v, "no reload within 10 s")
end
save(1)
local M = require "forked"
local first = assert(hotreload.watch(dir, { compile_ahead = ahead }))
local second = assert(hotreload.watch(dir, { compile_ahead = ahead, poll_ms = 50 }))
local pid = ffi.C.fork()
if pid == 0 then
  local ok, err = pcall(function()
    assert(tostring(first):find("not watching here", 1, true), tostring(first))
    first:close()
    local compiled = hotreload.stats().compiled_ahead
    local own = assert(hotreload.watch(dir, { compile_ahead = ahead }))
    save(2)
    reloaded(M, 2)
    assert((hotreload.stats().compiled_ahead > compiled) == ahead, "compiled ahead here")
    own:close()
    -- `second` is left to the state's close
  end)
  print(ok and "child ok" or "child failed: " .. tostring(err))
  io.stdout:flush()
  os.exit(ok and 0 or 1, true)
end
local status = ffi.new("int[1]")
assert(ffi.C.waitpid(pid, status, 0) == pid)
assert(status[0] == 0, "child status " .. status[0])
reloaded(M, 2) -- the child's save, seen here too
save(3)
reloaded(M, 3)
first:close()
second:close()
print("parent ok")
]=]

-- A fork while the hub's worker is busy watching a large tree just moved in (it holds the
-- lock on the watched directories while it walks): the child must still close its inherited
-- watch. The child gets 20 s; the parent kills it after that.
local busy_script = [=[
local dir, big = arg[1], arg[2]
local ffi = require "ffi"
ffi.cdef [[int fork(void); int waitpid(int pid, int *status, int options);
  int usleep(unsigned usec); void _exit(int status); int kill(int pid, int sig);]]
local hotreload = require "hotreload"
local w = assert(hotreload.watch(dir, { compile_ahead = false }))
assert(os.rename(big, dir .. "/big"))
ffi.C.usleep(20000)
local pid = ffi.C.fork()
if pid == 0 then
  w:close()
  ffi.C._exit(0)
end
local status = ffi.new("int[1]")
for _ = 1, 400 do
  if ffi.C.waitpid(pid, status, 1) == pid then
    print(status[0] == 0 and "child ok" or "child status " .. status[0])
    w:close()
    return
  end
  ffi.C.usleep(50000)
end
ffi.C.kill(pid, 9)
ffi.C.waitpid(pid, status, 0)
print("child hung closing its inherited watch")
]=]

--- Runs `source` in a child interpreter with the spec's paths and `...` as arguments; returns
--- what it printed.
local function run(source, ...)
  dirs = dirs + 1
  local file = h.write("fork-script" .. dirs .. ".lua", source)
  local prelude = ("package.path = %q; package.cpath = %q"):format(package.path, package.cpath)
  local p = assert(io.popen(("timeout 60 %s -e %q %s %s 2>&1"):format(
    h.interpreter, prelude, file, table.concat({ ... }, " "))))
  local out = p:read("*a")
  p:close()
  return out
end

describe("a forked process", function()
  for _, ahead in ipairs({ true, false }) do
    it(("closes inherited watches and watches anew (compile_ahead = %s)"):format(tostring(ahead)),
      function()
        if not h.jit then
          pending("forks through LuaJIT's ffi")
          return
        end
        dirs = dirs + 1
        local dir = h.root .. "/fork" .. dirs
        assert(lfs.mkdir(dir))
        local out = run(script, dir, tostring(ahead))
        assert.truthy(out:find("child ok", 1, true), out)
        assert.truthy(out:find("parent ok", 1, true), out)
      end)
  end

  it("closes an inherited watch forked while the watcher was busy", function()
    if not h.jit then
      pending("forks through LuaJIT's ffi")
      return
    end
    dirs = dirs + 1
    local dir, big = h.root .. "/fork" .. dirs, h.root .. "/big" .. dirs
    assert(lfs.mkdir(dir))
    assert.equal(0, h.sh(("mkdir '%s' && cd '%s' && seq 1 4000 | sed 's|^|d/|' | xargs mkdir -p")
      :format(big, big)))
    local out = run(busy_script, dir, big)
    assert.truthy(out:find("child ok", 1, true), out)
  end)
end)
