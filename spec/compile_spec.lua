-- Compiling saved files ahead, off the Lua thread (`watch(dir, {compile_ahead = ...})`, on by
-- default): the same results with and without it, and the cases where the chunk compiled
-- ahead must not be used. `hotreload.stats().compiled_ahead` counts the reloads that used one.
local h = require "spec.helpers"
local lfs = require "lfs"
local hotreload = require "hotreload"

teardown(h.cleanup)

local dirs = 0

-- A fresh directory `cN` under h.root (on package.path), whose modules are `cN.name`, with
-- `files` (name -> source) written and required; then watched with `opts`.
local function watched(files, opts)
  dirs = dirs + 1
  local prefix = ("c%03d"):format(dirs) -- one length: messages cut long paths alike
  local dir = h.root .. "/" .. prefix
  assert(lfs.mkdir(dir))
  local ctx = { prefix = prefix, dir = dir, modules = {} }
  for name, source in pairs(files) do
    h.write(prefix .. "/" .. name .. ".lua", source)
    ctx.modules[name] = require(prefix .. "." .. name)
  end
  ctx.watcher = assert(hotreload.watch(dir, opts))
  return ctx
end

local function ahead()
  return hotreload.stats().compiled_ahead
end

-- Polls until nothing is pending; returns the reload count and the messages, in all.
local function poll_all()
  local n, errors = 0, {}
  assert(h.wait_until(function()
    local k, errs = hotreload.poll()
    n = n + k
    for _, e in ipairs(errs or {}) do errors[#errors + 1] = e end
    return hotreload.pending() == 0 and (n > 0 or #errors > 0)
  end))
  return n, errors
end

-- Each pair: the module's first and second source. `%s` stands for the module's name where
-- a message would show it.
local pairs_ = {
  { "plain edit, state kept",
    "local n = 0\nlocal M = {}\nfunction M.bump() n = n + 1 return n end\n"
      .. "function M.v() return 1 end\nreturn M\n",
    "local n = 0\nlocal M = {}\nfunction M.bump() n = n + 10 return n end\n"
      .. "function M.v() return 2 end\nreturn M\n" },
  { "a shebang line keeps line numbers",
    "local M = {}\nfunction M.v() return 1 end\nreturn M\n",
    "#!/usr/bin/env lua\nlocal M = {}\nfunction M.v() error('boom') end\n"
      .. "function M.line() return debug.getinfo(1, 'l').currentline end\nreturn M\n" },
  { "a byte order mark",
    "local M = {}\nfunction M.v() return 1 end\nreturn M\n",
    "\239\187\191local M = {}\nfunction M.v() return 'bom' end\nreturn M\n" },
  { "a syntax error",
    "local M = {}\nfunction M.v() return 1 end\nreturn M\n",
    "local M = {}\nfunction M.v() return 1 +\nend\nreturn M\n" },
  { "a runtime error in the top level",
    "local M = {}\nfunction M.v() return 1 end\nreturn M\n",
    "local M = {}\nfunction M.v() return 2 end\nerror('top level ' .. ...)\nreturn M\n" },
  { "factory closures",
    "local M = {}\nfunction M.make(k) return function() return k end end\n"
      .. "M.a = M.make(1)\nreturn M\n",
    "local M = {}\nfunction M.make(k) return function() return k * 100 end end\n"
      .. "M.a = M.make(1)\nreturn M\n" },
}

-- What a program can see of module `M` and of its reload: values, errors, debug information
-- and the report, with the module's name and directory replaced by placeholders.
local function observe(ctx, name, M, n, errors, report)
  local function plain(s)
    s = tostring(s):gsub(ctx.dir:gsub("%p", "%%%0"), "<dir>")
    return (s:gsub(name:gsub("%p", "%%%0"), "<name>"):gsub(ctx.prefix, "<prefix>"))
  end
  local seen = { "n=" .. n }
  for _, e in ipairs(errors) do seen[#seen + 1] = "error: " .. plain(e) end
  local keys = {}
  for k in pairs(M) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = M[k]
    if type(v) == "function" then
      local info = debug.getinfo(v, "S")
      local ok, r = pcall(v, 2)
      if k == "make" then ok, r = pcall(v(3)) end
      seen[#seen + 1] = ("%s: %s %s:%d-%d -> %s %s"):format(k, plain(info.source),
        plain(info.short_src), info.linedefined, info.lastlinedefined, tostring(ok), plain(r))
    else
      seen[#seen + 1] = k .. " = " .. plain(v)
    end
  end
  if report then
    local fields = {}
    for k, v in pairs(report) do
      if type(v) ~= "table" and k ~= "seconds" then
        fields[#fields + 1] = k .. "=" .. plain(v)
      end
    end
    table.sort(fields)
    seen[#seen + 1] = "report: " .. table.concat(fields, " ")
  end
  return table.concat(seen, "\n")
end

-- Runs one pair in a fresh directory with `compile_ahead` as given; returns what was seen
-- and how many reloads used a chunk compiled ahead.
local function run(pair, compile_ahead)
  local ctx = watched({ m = pair[2] }, { compile_ahead = compile_ahead })
  local name = ctx.prefix .. ".m"
  local M = ctx.modules.m
  if M.bump then M.bump() end
  local report
  local remove = hotreload.on_reload(function(reloaded, _, r)
    if reloaded == name then report = r end
  end)
  local before = ahead()
  h.write(ctx.prefix .. "/m.lua", pair[3])
  local n, errors = poll_all()
  remove()
  if M.bump then M.bump() end
  ctx.watcher:close()
  return observe(ctx, name, M, n, errors, report), ahead() - before
end

describe("compile ahead", function()
  for _, pair in ipairs(pairs_) do
    it("gives the same results with and without it: " .. pair[1], function()
      local with, used = run(pair, true)
      local without, unused = run(pair, false)
      assert.equal(without, with)
      assert.equal(1, used, "the chunk compiled ahead was used")
      assert.equal(0, unused)
    end)
  end

  it("uses the last bytes of a file saved twice quickly", function()
    local ctx = watched({ twice = "return { v = function() return 1 end }\n" })
    local M = ctx.modules.twice
    local before = ahead()
    h.write(ctx.prefix .. "/twice.lua", "return { v = function() return 2 end }\n")
    h.write(ctx.prefix .. "/twice.lua", "return { v = function() return 3 end }\n")
    local n = poll_all()
    assert.equal(1, n)
    assert.equal(3, M.v())
    -- (the worker may have read the first save's event after the second save, or poll may
    -- have taken the first event before the second arrived: then it compiled the file itself)
    assert.is_true(ahead() - before <= 1)
    ctx.watcher:close()
  end)

  it("compiles on the Lua thread a file changed after the worker read it", function()
    -- a hard link outside the watched tree changes the file without an event for it
    local ctx = watched({ linked = "return { v = function() return 1 end }\n" }, { settle_ms = 300 })
    local path = ctx.dir .. "/linked.lua"
    local outside = h.root .. "/outside-" .. ctx.prefix .. ".lua"
    assert(lfs.link(path, outside))
    local M = ctx.modules.linked
    local before, compiled = ahead(), hotreload.stats().files_compiled_ahead
    h.write(ctx.prefix .. "/linked.lua", "return { v = function() return 2 end }\n")
    -- the worker reads and compiles it at once (it may answer before the event thread has
    -- queued the save); the save is not ready for 300 ms
    assert(h.wait_until(function()
      return hotreload.stats().files_compiled_ahead > compiled and hotreload.pending() == 1
    end))
    local f = assert(io.open(outside, "r+b")) -- same file, rewritten in place
    assert(f:write("return { v = function() return 3 end }\n"))
    assert(f:close())
    local n = poll_all()
    assert.equal(1, n)
    assert.equal(3, M.v(), "the bytes on disk, not the ones compiled ahead")
    assert.equal(0, ahead() - before)
    ctx.watcher:close()
  end)

  it("leaves a module a custom searcher loads to that searcher", function()
    dirs = dirs + 1
    local prefix = ("c%03d"):format(dirs) -- one length: messages cut long paths alike
    local path = h.write(prefix .. "/custom.lua", "return { v = function() return 1 end }\n")
    local searchers = package.searchers or package.loaders
    local calls = 0
    local function custom(name)
      if name ~= prefix .. ".custom" then return nil end
      calls = calls + 1
      return assert(loadfile(path)), path
    end
    table.insert(searchers, 2, custom)
    local M = require(prefix .. ".custom")
    local ctx = { prefix = prefix, watcher = assert(hotreload.watch(h.root .. "/" .. prefix)) }
    local before = ahead()
    h.write(ctx.prefix .. "/custom.lua", "return { v = function() return 2 end }\n")
    local n = poll_all()
    for i, s in ipairs(searchers) do
      if s == custom then table.remove(searchers, i) break end
    end
    assert.equal(1, n)
    assert.equal(2, M.v())
    assert.equal(2, calls, "the custom searcher loaded it again")
    assert.equal(0, ahead() - before)
    ctx.watcher:close()
  end)

  it("is not held up by a FIFO under a Lua file's name", function()
    local ctx = watched({ after = "return { v = function() return 1 end }\n" })
    local M = ctx.modules.after
    local fifo, outside = ctx.dir .. "/pipe.lua", h.root .. "/pipe-" .. ctx.prefix
    local passed = false
    finally(function()
      if not passed then
        -- a worker that opened the FIFO waits for a writer: moved out of the tree (where a
        -- write would be a new save), it gets one for at most 5 s
        os.rename(fifo, outside)
        os.execute(("timeout 5 sh -c ': > \"%s\"'"):format(outside))
      end
      ctx.watcher:close()
      os.remove(fifo)
      os.remove(outside)
    end)
    -- made outside and moved in, so that it is seen at once (rename-to)
    assert(os.execute(("mkfifo '%s'"):format(outside)))
    assert(os.rename(outside, fifo))
    local before = ahead()
    h.write(ctx.prefix .. "/after.lua", "return { v = function() return 2 end }\n")
    local n = poll_all()
    assert.equal(1, n)
    assert.equal(2, M.v())
    assert.equal(1, ahead() - before, "the worker got past it to the module's save")
    passed = true
  end)

  it("rejects a bad compile_ahead option", function()
    assert.has_error(function() hotreload.watch(h.root, { compile_ahead = "yes" }) end,
      "bad option 'compile_ahead' to 'watch' (boolean expected, got string)")
  end)
end)
