-- A TAP runner for the busted subset our specs use, for hosts busted cannot run on: Debian
-- packages busted's C modules (lfs, luasystem, lua-term) for Lua 5.1-5.4 only, so Lua 5.5
-- runs the specs with this (.ci/hosts/test). luassert is pure Lua and loads from 5.4's tree.
--   lua spec/tap.lua [--cpath=PATH] [--lpath=PATH] spec/x_spec.lua...
--   prove --exec 'lua spec/tap.lua --cpath=build/lua55/?.so' spec/x_spec.lua
-- The subset: describe, it, pending (a test, or inside one to skip it), setup, teardown,
-- before_each, after_each, finally, and luassert as `assert`. Output as busted's TAP: a line
-- per test as it ends (so a crash leaves prove without a plan: a failure), then the plan.
-- Exits 1 if a test or a hook failed. Files share one state (no insulation).

local files, cpath, lpath = {}, nil, nil
for _, a in ipairs(arg) do
  if a:match("^%-%-cpath=") then cpath = a:match("=(.*)")
  elseif a:match("^%-%-lpath=") then lpath = a:match("=(.*)")
  else files[#files + 1] = a end
end
-- as busted does: .busted's lpath, then the options, before the interpreter's paths
local ok_conf, conf = pcall(dofile, ".busted")
lpath = lpath or (ok_conf and conf._all and conf._all.lpath)
if lpath then package.path = lpath:gsub(";*$", ";") .. package.path end
if cpath then package.cpath = cpath:gsub(";*$", ";") .. package.cpath end

local function sh_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function succeeds(cmd)
  local ok, how, code = os.execute(cmd)
  if type(ok) == "number" then return ok == 0 end
  return ok == true and how == "exit" and code == 0
end

-- Where the real lfs or luasystem does not load, the few calls spec/helpers.lua and the specs
-- make, through the shell (POSIX mkdir, rmdir, ls, sleep; GNU stat).
local fallback = {}

function fallback.lfs()
  local lfs = {}
  local function run(cmd, path)
    if succeeds(cmd .. " -- " .. sh_quote(path) .. " 2>/dev/null") then return true end
    return nil, cmd .. " " .. path .. ": failed"
  end
  function lfs.mkdir(path) return run("mkdir", path) end
  function lfs.rmdir(path) return run("rmdir", path) end
  function lfs.link(old, new, symlink)
    return run("ln " .. (symlink and "-s " or "") .. sh_quote(old), new)
  end
  local kinds = { ["directory"] = "directory", ["regular file"] = "file",
    ["regular empty file"] = "file", ["symbolic link"] = "link" }
  local function mode(stat, path, request)
    local p = assert(io.popen(stat .. " -c %F -- " .. sh_quote(path) .. " 2>/dev/null"))
    local kind = p:read("*l")
    p:close()
    if not kind then return nil, path .. ": No such file or directory" end
    local attributes = { mode = kinds[kind] or "other" }
    if request then return attributes[request] end
    return attributes
  end
  function lfs.attributes(path, request) return mode("stat -L", path, request) end
  function lfs.symlinkattributes(path, request) return mode("stat", path, request) end
  function lfs.dir(path)
    local p = assert(io.popen("ls -a -- " .. sh_quote(path) .. " 2>/dev/null && echo .."))
    local names = {}
    for line in p:lines() do names[#names + 1] = line end
    p:close()
    -- ls lists . and .. first; the extra ".." says it succeeded
    if names[#names] ~= ".." or #names < 3 then error("cannot open " .. path, 2) end
    names[#names] = nil
    local i = 0
    return function()
      i = i + 1
      return names[i]
    end
  end
  return lfs
end

function fallback.system()
  local system = {}
  -- /proc/uptime: monotonic, in hundredths of a second; else os.time's seconds
  function system.monotime()
    local f = io.open("/proc/uptime")
    local t = f and f:read("*n")
    if f then f:close() end
    return t or os.time()
  end
  function system.sleep(s)
    succeeds(("sleep %.3f"):format(s))
  end
  return system
end

-- loaded, not preloaded: no searcher finds them (reload_spec reloads lfs as a C module)
for name, make in pairs(fallback) do
  if not pcall(require, name) then package.loaded[name] = make() end
end

local luassert = require "luassert"

local PENDING = {}           -- metatable of what pending() throws inside a test
local root = { name = nil, children = {}, hooks = {} }
local block = root           -- the describe block being collected
local finallies              -- during a test: its finally functions

local function add_hook(kind)
  return function(fn)
    local hooks = block.hooks
    hooks[kind] = hooks[kind] or {}
    table.insert(hooks[kind], fn)
  end
end

local function where()
  local info = debug.getinfo(3, "Sl")
  return info and (info.short_src .. " @ " .. tostring(info.currentline)) or "?"
end

local function traceback(e)
  if getmetatable(e) == PENDING then return e end
  return debug.traceback(type(e) == "string" and e or tostring(e), 2)
end

local dsl = {
  setup = add_hook("setup"),
  teardown = add_hook("teardown"),
  before_each = add_hook("before_each"),
  after_each = add_hook("after_each"),
}
dsl.lazy_setup, dsl.lazy_teardown = dsl.setup, dsl.teardown
dsl.strict_setup, dsl.strict_teardown = dsl.setup, dsl.teardown

function dsl.describe(name, fn)
  local child = { name = name, parent = block, children = {}, hooks = {}, where = where() }
  table.insert(block.children, child)
  local outer = block
  block = child
  local ok, err = xpcall(fn, traceback)
  block = outer
  if not ok then
    table.insert(child.children, { error = err, name = "(describe)", parent = child, where = child.where })
  end
end

function dsl.it(name, fn)
  table.insert(block.children, { name = name, fn = fn, parent = block, where = where() })
end

function dsl.pending(name, fn)
  if finallies then error(setmetatable({ message = name }, PENDING)) end
  table.insert(block.children, { name = name, skip = true, fn = fn, parent = block, where = where() })
end

function dsl.finally(fn)
  assert(finallies, "finally() outside a test")
  table.insert(finallies, fn)
end

local count, failed = 0, 0

local function say(line)
  io.write(line, "\n")
  io.flush()
end

local function report(name, place, err)
  count = count + 1
  if err == nil then
    say(("ok %d - %s"):format(count, name))
  elseif getmetatable(err) == PENDING then
    say(("ok %d - # SKIP %s"):format(count, err.message or name))
  else
    failed = failed + 1
    say(("not ok %d - %s"):format(count, name))
    say("# " .. place)
    say("# Failure message: " .. tostring(err):gsub("\n", "\n# "))
  end
end

local function full_name(node)
  local parts = {}
  local b = node.parent
  while b do
    if b.name then table.insert(parts, 1, b.name) end
    b = b.parent
  end
  parts[#parts + 1] = node.name
  return table.concat(parts, " ")
end

-- the hooks of `kind` for a test in block `b`: the outermost block's first (before_each) or
-- the innermost's first (after_each); a block's own in the order they were declared
local function chain(b, kind, inward)
  local blocks = {}
  while b do
    table.insert(blocks, inward and 1 or #blocks + 1, b)
    b = b.parent
  end
  local list = {}
  for _, each in ipairs(blocks) do
    for _, fn in ipairs(each.hooks[kind] or {}) do list[#list + 1] = fn end
  end
  return list
end

local function run_all(fns, err)
  for _, fn in ipairs(fns) do
    local ok, e = xpcall(fn, traceback)
    if not ok and err == nil then err = e end
  end
  return err
end

local function run_test(node)
  if node.skip then return report(full_name(node), node.where, setmetatable({}, PENDING)) end
  finallies = {}
  local err = run_all(chain(node.parent, "before_each", true))
  if err == nil then
    local ok, e = xpcall(node.fn, traceback)
    if not ok then err = e end
  end
  local fins = finallies
  finallies = nil
  err = run_all(fins, err)
  err = run_all(chain(node.parent, "after_each", false), err)
  report(full_name(node), node.where, err)
end

local function run_block(b)
  local err = run_all(b.hooks.setup or {})
  if err ~= nil then
    report((b.name or "file") .. " setup", b.where or "", err)
  else
    for _, node in ipairs(b.children) do
      if node.error then report(full_name(node), node.where, node.error)
      elseif node.children then run_block(node)
      else run_test(node) end
    end
  end
  err = run_all(b.hooks.teardown or {})
  if err ~= nil then report((b.name or "file") .. " teardown", b.where or "", err) end
end

for k, v in pairs(dsl) do _G[k] = v end
_G["assert"] = luassert

for _, file in ipairs(files) do
  root = { name = nil, children = {}, hooks = {}, where = file }
  block = root
  local chunk, err = loadfile(file)
  local ok = chunk ~= nil
  if ok then ok, err = xpcall(chunk, traceback) end
  if ok then run_block(root) else report(file, file, err) end
end

say("1.." .. count)
collectgarbage()
collectgarbage()
os.exit(failed == 0 and 0 or 1, true)
