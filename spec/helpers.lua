-- Shared spec helpers: a scratch directory on package.path, module files written into it,
-- and small waits with deadlines.
local lfs = require "lfs"
local system = require "system"

local helpers = {}

-- `make stress` runs the whole suite with the collector as aggressive as it gets: a full cycle
-- starts as soon as the previous one ends (and on Lua 5.4, a second run in generational mode).
local gc_mode = os.getenv("HOTRELOAD_GC_STRESS")
if gc_mode == "generational" then
  collectgarbage("generational")
elseif gc_mode then
  collectgarbage("setpause", 0)
  collectgarbage("setstepmul", 1000)
end

local sep = package.config:sub(1, 1)
-- A name no other spec file took: LuaJIT's and 5.3's math.random give every process the same
-- numbers, a file that crashed its interpreter never removed its directory, and another run
-- of the suite may be going on at the same time.
local root
for _ = 1, 100 do
  root = (os.getenv("TMPDIR") or "/tmp") .. sep .. "hotreload-spec-" .. tostring(os.time())
    .. "-" .. tostring(math.random(1, 1e9))
  if lfs.mkdir(root) then break end
  root = nil
end
helpers.root = assert(root, "no scratch directory could be made")
package.path = root .. sep .. "?.lua;" .. root .. sep .. "?" .. sep .. "init.lua;" .. package.path

local function mkdirs(path)
  local acc = ""
  for part in path:gmatch("[^/]+") do
    acc = acc == "" and (path:sub(1, 1) == "/" and "/" .. part or part) or acc .. "/" .. part
    if not lfs.attributes(acc) then assert(lfs.mkdir(acc)) end
  end
end
helpers.mkdirs = mkdirs

--- Writes `source` to `relpath` under the scratch directory (creating directories).
function helpers.write(relpath, source)
  local path = root .. "/" .. relpath
  mkdirs(path:match("^(.*)/[^/]*$"))
  local f = assert(io.open(path, "wb"))
  assert(f:write(source))
  assert(f:close())
  return path
end

local counter = 0
--- A fresh module name (so specs never share a module) whose file holds `source`.
function helpers.module(source)
  counter = counter + 1
  local name = "mod" .. counter
  helpers.write(name .. ".lua", source)
  return name
end

--- Replaces the source of module `name` (a plain `a.b` name, one file).
function helpers.rewrite(name, source)
  return helpers.write(name:gsub("%.", "/") .. ".lua", source)
end

--- Deletes the scratch directory (registered with busted's teardown by the spec files).
function helpers.cleanup()
  local function rm(path)
    local mode = lfs.symlinkattributes(path, "mode")
    if mode == "directory" then
      for entry in lfs.dir(path) do
        if entry ~= "." and entry ~= ".." then rm(path .. "/" .. entry) end
      end
      lfs.rmdir(path)
    elseif mode then
      os.remove(path)
    end
  end
  rm(root)
end

--- Full collections until the heap settles.
function helpers.collect()
  for _ = 1, 4 do collectgarbage("collect") end
end

helpers.jit = rawget(_G, "jit")

--- Calls `cond` until it returns a true value or `timeout` seconds (default 5) pass:
--- waits with a deadline, never a fixed sleep. Returns the value, or false on timeout.
function helpers.wait_until(cond, timeout)
  local deadline = system.monotime() + (timeout or 5)
  repeat
    local v = cond()
    if v then return v end
    system.sleep(0.001)
  until system.monotime() > deadline
  return false
end

--- The interpreter running the specs, for child processes. HOTRELOAD_SPEC_LUA names it where
--- it is not Debian's (the CI matrix's hosts, .ci/hosts/test), so children run on the same VM.
helpers.interpreter = os.getenv("HOTRELOAD_SPEC_LUA")
  or (helpers.jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+")))

--- Runs a shell command; returns its exit code (as `os.execute` reports it on any version).
function helpers.sh(cmd)
  local ok, how, code = os.execute(cmd)
  if type(ok) == "number" then return ok / 256 end -- Lua 5.1: the raw status
  return how == "exit" and code or 128 + code
end

--- Runs `script` in a child interpreter with the same package paths; returns its exit code.
function helpers.run_child(script)
  local file = helpers.write("child" .. tostring(math.random(1, 1e9)) .. ".lua", script)
  local prelude = ("package.path = %q; package.cpath = %q"):format(package.path, package.cpath)
  return helpers.sh(("timeout 20 %s -e %q %s 2>/dev/null"):format(helpers.interpreter, prelude, file))
end

--- The module under test: hotreload, or the seed's naive reloader when
--- HOTRELOAD_SPEC_NAIVE is set (to show the rule specs fail without the rules).
function helpers.hotreload()
  if os.getenv("HOTRELOAD_SPEC_NAIVE") then return require "spec.naive" end
  return require "hotreload"
end

return helpers
