-- Bad input: each case is answered with a clear error (or the documented behaviour), and the
-- module that was loaded stays intact. Each spec runs under every VM.
local h = require "spec.helpers"
local lfs = require "lfs"
local hotreload = require "hotreload"

teardown(h.cleanup)

local V1 = "return { v = 1, f = function() return 'v1' end }"

-- Loads `V1` under a fresh name, replaces the file with `bytes`, reloads; returns the old
-- module, the name, and what reload returned.
local function reload_to(bytes)
  local name = h.module(V1)
  local M = require(name)
  h.rewrite(name, bytes)
  return M, name, hotreload.reload(name)
end

local function assert_intact(M, name)
  assert.equal(M, package.loaded[name])
  assert.equal(1, M.v)
  assert.equal("v1", M.f())
end

describe("a new version that cannot be used", function()
  local cases = {
    { "a syntax error", "return { v = = 2 }", ":1:" },
    { "a top-level error()", "error('top level failed')", ":1: top level failed" },
    { "an error object that is a table", "error({ code = 7 })", "error object is a table" },
    { "an error object with __tostring",
      "error(setmetatable({}, { __tostring = function() return 'custom' end }))", "custom" },
    -- (Lua 5.5 raises its own text for a nil error object)
    { "error() without a value", "error()",
      _VERSION == "Lua 5.5" and "<no error object>" or "error object is a nil value" },
    { "returning nil (require stores true)", "return nil", "returns a boolean" },
    { "returning false", "return false", "returns a boolean" },
    { "returning a number", "return 42", "returns a number" },
    { "returning a string", "return 'text'", "returns a string" },
    { "returning a function", "return function() end", "returns a function" },
    { "returning a userdata", "return io.stdout", "returns a userdata" },
    { "an empty file (returns nothing)", "", "returns a boolean" },
    { "binary garbage", "\0\1\2\255\254garbage", ":1:" },
  }
  for _, c in ipairs(cases) do
    it(c[1] .. ": nil, a message naming the module; the module intact", function()
      local M, name, ok, err = reload_to(c[2])
      assert.is_nil(ok)
      assert.is_string(err)
      assert.matches("cannot reload '" .. name .. "'", err, 1, true)
      assert.matches(c[3], err, 1, true)
      assert_intact(M, name)
    end)
  end

  it("a missing file: nil and require's message; the module intact", function()
    local name = h.module(V1)
    local M = require(name)
    assert(os.remove(h.root .. "/" .. name .. ".lua"))
    local ok, err = hotreload.reload(name)
    assert.is_nil(ok)
    assert.matches("module '" .. name .. "' not found", err, 1, true)
    assert_intact(M, name)
  end)

  it("a directory named like the module's file: nil and the read error", function()
    local name = h.module(V1)
    local M = require(name)
    local path = h.root .. "/" .. name .. ".lua"
    assert(os.remove(path))
    assert(lfs.mkdir(path))
    local ok, err = hotreload.reload(name)
    assert.is_nil(ok)
    assert.matches(name, err, 1, true)
    assert_intact(M, name)
    assert(lfs.rmdir(path))
  end)
end)

describe("a new version in an unusual form", function()
  it("a UTF-8 byte order mark and a shebang line are skipped, as by loadfile", function()
    for _, prefix in ipairs({ "\239\187\191", "#!/usr/bin/env lua\n" }) do
      local name = h.module(V1)
      local M = require(name)
      h.rewrite(name, prefix .. "return { v = 2, f = function() return 'v2' end }")
      assert(hotreload.reload(name))
      assert.equal(2, M.v)
      assert.equal("v2", M.f())
    end
  end)

  it("a precompiled bytecode file loads as require would load it, and merges", function()
    local name = h.module("local n = 0\nreturn { v = 1, inc = function() n = n + 1 return n end }")
    local M = require(name)
    M.inc()
    local chunk = assert((loadstring or load)(
      "local n = 0\nreturn { v = 2, inc = function() n = n + 10 return n end }"))
    h.rewrite(name, string.dump(chunk))
    assert(hotreload.reload(name))
    assert.equal(2, M.v)
    assert.equal(11, M.inc()) -- upvalue names are in the dump: the counter is kept
  end)

  it("a stripped bytecode file has no upvalue names: its functions keep their own cells", function()
    local name = h.module("local n, step = 0, 1\n"
      .. "return { v = 1, inc = function() n = n + step return n end }")
    local M = require(name)
    M.inc()
    local chunk = assert((loadstring or load)(
      "local n, step = 0, 10\nreturn { v = 2, inc = function() n = n + step return n end }"))
    h.rewrite(name, string.dump(chunk, true))
    assert(hotreload.reload(name))
    assert.equal(2, M.v)
    assert.equal(10, M.inc()) -- nothing to match the old cells by: the new ones are kept
    assert.equal(20, M.inc())
  end)

  it("a non-table module takes the new value, whatever its type", function()
    local values = { "nil", "false", "42", "'text'", "io.stdout" }
    for i, v in ipairs(values) do
      local name = h.module("return " .. v)
      require(name)
      local next_value = values[i % #values + 1]
      h.rewrite(name, "return " .. next_value)
      local m = hotreload.reload(name)
      local expected = assert((loadstring or load)("return " .. next_value))()
      if expected == nil then expected = true end -- require stores true
      assert.equal(expected, m)
      assert.equal(expected, package.loaded[name])
    end
  end)

  it("a 10 MB generated module reloads, and keeps its state", function()
    local parts = { "local M = { count = 0 }", "function M.inc() M.count = M.count + 1 end" }
    -- 2000 entries of 5 KB (LuaJIT allows 65536 constants per function)
    local filler = ("M.data%d = { id = %d, name = 'item %d', text = '%s' }")
    local pad = string.rep("x", 5000)
    local i = 0
    local size = 0
    while size < 10 * 1024 * 1024 do
      i = i + 1
      local line = filler:format(i, i, i, pad)
      parts[#parts + 1] = line
      size = size + #line + 1
    end
    parts[#parts + 1] = "return M"
    local big = table.concat(parts, "\n")
    local name = h.module(big)
    local M = require(name)
    M.inc()
    h.rewrite(name, big:gsub("M.count %+ 1", "M.count + 2", 1))
    assert(hotreload.reload(name))
    M.inc()
    assert.equal(3, M.count)
    assert.equal("item " .. i, M["data" .. i].name)
  end)
end)

describe("bad names", function()
  it("raises on a name that is not a string (misuse)", function()
    assert.has_error(function() hotreload.reload(42) end)
    assert.has_error(function() hotreload.reload(nil) end)
    assert.has_error(function() hotreload.reload() end)
  end)

  it("answers an empty or malformed name as require would: not found", function()
    for _, name in ipairs({ "", "a..b", ".", "no/such" }) do
      local ok, err = hotreload.reload(name)
      assert.is_nil(ok, name)
      assert.matches("not found", err, 1, true)
    end
  end)

  it("refuses to reload hotreload itself (a C module)", function()
    local ok, err = hotreload.reload("hotreload")
    assert.is_nil(ok)
    assert.matches("C module", err, 1, true)
    assert.is_function(hotreload.reload)
  end)
end)

describe("bad watch targets", function()
  it("a file, a missing path: nil and a message saying which", function()
    local file = h.write("plain.txt", "x")
    local w, err = hotreload.watch(file)
    assert.is_nil(w)
    assert.matches("not a directory", err, 1, true)
    w, err = hotreload.watch(h.root .. "/missing/dir")
    assert.is_nil(w)
    assert.matches("no such directory", err, 1, true)
  end)

  it("a directory whose path is not UTF-8: nil and a message saying so", function()
    local dir = h.root .. "/caf\233"
    assert(lfs.mkdir(dir))
    local w, err = hotreload.watch(dir)
    assert.is_nil(w)
    assert.matches("is not UTF-8", err, 1, true)
    assert.equal(0, hotreload.unwatch(dir))
  end)

  it("a directory without permission: nil and the OS error (not testable as root)", function()
    local dir = h.root .. "/locked"
    assert(lfs.mkdir(dir))
    assert.equal(0, h.sh("chmod 000 '" .. dir .. "'"))
    local can_read = lfs.dir ~= nil and pcall(function() for _ in lfs.dir(dir) do end end)
    local w, err = hotreload.watch(dir)
    h.sh("chmod 755 '" .. dir .. "'")
    if can_read then
      -- root reads anything: watching works, and closes cleanly
      assert(w, err)
      w:close()
    else
      assert.is_nil(w)
      assert.matches("locked", err, 1, true)
    end
  end)

  it("a tree with a symlink loop and a non-UTF-8 file name: watching and polling work", function()
    local dir = h.root .. "/loopy"
    assert(lfs.mkdir(dir))
    assert.equal(0, h.sh(("ln -s '%s' '%s/self'"):format(dir, dir)))
    local w = assert(hotreload.watch(dir))
    h.write("loopy/bad\255name.lua", "return {}")
    h.write("loopy/good.lua", "return { v = 1 }")
    local M = require "loopy.good"
    h.write("loopy/good.lua", "return { v = 2 }")
    assert(h.wait_until(function()
      hotreload.poll()
      return M.v == 2
    end))
    w:close()
  end)

  it("a file deleted between its change event and the poll: nothing happens", function()
    local dir = h.root .. "/gone"
    assert(lfs.mkdir(dir))
    h.write("gone/vanish.lua", V1)
    local M = require "gone.vanish"
    local w = assert(hotreload.watch(dir))
    h.write("gone/vanish.lua", "return { v = 2 }")
    assert(h.wait_until(function() return hotreload.pending() > 0 end))
    assert(os.remove(dir .. "/vanish.lua"))
    local n, errors = hotreload.poll()
    w:close()
    assert.equal(0, n)
    assert.is_nil(errors)
    assert_intact(M, "gone.vanish")
  end)

  it("a directory named x.lua in a watched tree is not a module file", function()
    local dir = h.root .. "/dirs"
    assert(lfs.mkdir(dir))
    package.loaded["dirs.x"] = { loaded = true } -- as if a module dirs.x were loaded
    local w = assert(hotreload.watch(dir))
    assert(lfs.mkdir(dir .. "/x.lua"))
    h.write("dirs/x.lua/inner.lua", "return {}")
    assert(h.wait_until(function() return hotreload.pending() > 0 end))
    local n, errors = hotreload.poll()
    w:close()
    package.loaded["dirs.x"] = nil
    assert.equal(0, n) -- the directory was not taken for dirs.x's file
    assert.is_nil(errors)
  end)
end)

describe("unusual module tables", function()
  it("a module frozen behind a read-only proxy reloads (raw access only)", function()
    local src = [[
      local real = { f = function() return "%s" end }
      return setmetatable({}, {
        __index = real,
        __newindex = function() error("read-only module") end,
      })
    ]]
    local name = h.module(src:format("v1"))
    local M = require(name)
    h.rewrite(name, src:format("v2"))
    assert(hotreload.reload(name))
    assert.equal("v2", M.f())
    assert.has_error(function() M.x = 1 end)
  end)

  it("a module whose metatable has __gc, __close and __mode reloads", function()
    local src = [[
      local M = { f = function() return "%s" end, cache = setmetatable({}, { __mode = "k" }) }
      return setmetatable(M, { __gc = function() end, __close = function() end })
    ]]
    local name = h.module(src:format("v1"))
    local M = require(name)
    local key = {}
    M.cache[key] = true
    h.rewrite(name, src:format("v2"))
    assert(hotreload.reload(name))
    assert.equal("v2", M.f())
    assert.equal("k", getmetatable(M.cache).__mode)
    key = nil -- luacheck: ignore
    h.collect()
    assert.is_nil(next(M.cache), "the weak table still holds its key")
  end)
end)

describe("sizes and numbers at the edges", function()
  it("a transaction of thousands of modules reloads on every VM", function()
    local names, sources = {}, {}
    for i = 1, 3000 do
      names[i] = ("edge_tx_%d_%d"):format(i, math.random(1, 1e9))
      sources[names[i]] = ("return { v = %d }"):format(i)
    end
    local modules = assert(hotreload.reload(names, { source = sources }))
    assert.equal(3000, #modules)
    assert.equal(3000, modules[3000].v)
    -- one that fails leaves all of them untouched
    sources[names[3000]] = "return {"
    local ok, err = hotreload.reload(names, { source = sources })
    assert.is_nil(ok)
    assert.matches("cannot reload '" .. names[3000] .. "'", err, 1, true)
    assert.equal(3000, package.loaded[names[3000]].v)
  end)

  it("repeated names in a transaction give results in the order of the names", function()
    local a, b = h.module("return { v = 'a' }"), h.module("return { v = 'b' }")
    local modules, reports = assert(hotreload.reload({ a, a, b }))
    assert.equal(3, #modules)
    assert.equal(3, #reports)
    assert.equal(modules[1], modules[2])
    assert.equal("a", modules[2].v)
    assert.equal("b", modules[3].v)
  end)

  it("poll(math.huge) and poll(0/0) are no budget and a zero budget; settle_ms = math.huge raises",
    function()
    assert.is_number((hotreload.poll(math.huge)))
    assert.is_number((hotreload.poll(0 / 0)))
    assert.has_error(function() hotreload.watch(h.root, { settle_ms = math.huge }) end)
  end)
end)
