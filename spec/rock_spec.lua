-- The rockspec builds offline with Debian's luarocks and only cargo, for the interpreter
-- running the specs, and the installed module loads through `luarocks path`.
local h = require "spec.helpers"

teardown(h.cleanup)

-- How to call luarocks for this interpreter (nil: not supported by the rock).
local function luarocks()
  if h.jit then
    return "LUAROCKS_CONFIG=$PWD/rockspec/luarocks-luajit.lua luarocks --lua-version=5.1"
  elseif _VERSION == "Lua 5.4" then
    return "luarocks --lua-version=5.4"
  end
end

describe("luarocks", function()
  it("lints both rockspecs", function()
    for _, spec in ipairs({ "hotreload-scm-1", "hotreload-0.1.0-1" }) do
      assert.equal(0, h.sh("luarocks lint rockspec/" .. spec .. ".rockspec >/dev/null 2>&1"), spec)
    end
  end)

  it("installs into a tree, and require finds it there through `luarocks path`", function()
    local lr = luarocks()
    if not lr then
      pending("the rock is tested under lua5.4 and luajit; " .. _VERSION .. " is built by make")
      return
    end
    local tree = h.root .. "/tree"
    local log = h.root .. "/luarocks.log"
    local status = h.sh(("%s make rockspec/hotreload-scm-1.rockspec --tree %s >%s 2>&1")
      :format(lr, tree, log))
    local f = io.open(log)
    local text = f and f:read("*a") or ""
    if f then f:close() end
    assert.equal(0, status, text)
    local script = h.write("rockcheck.lua", ([[
      local hotreload = require "hotreload"
      local where = package.searchpath("hotreload", package.cpath)
      assert(where:find(%q, 1, true) == 1, "loaded from " .. where)
      for _, helper in ipairs({ "hotreload.love", "hotreload.nvim", "hotreload.nginx",
        "hotreload.haproxy", "hotreload.helper" }) do
        local path = package.searchpath(helper, package.path)
        assert(path and path:find(%q, 1, true) == 1, helper .. " not installed in the tree")
      end
      local m = assert(hotreload.reload("rockcheck_mod", { source = "return { v = 1 }" }))
      assert(m.v == 1)
      io.write("ok ", hotreload.flavor)
    ]]):format(tree, tree))
    -- a clean environment: only what `luarocks path` exports
    local cmd = ([[env -u LUA_PATH -u LUA_CPATH sh -c 'eval "$(%s --tree %s path)" && cd / && %s %s']])
      :format(lr, tree, h.interpreter, script)
    local p = assert(io.popen(cmd .. " 2>&1"))
    local out = p:read("*a")
    p:close()
    assert.equal("ok " .. (h.jit and "luajit" or "lua54"), out)
  end)
end)
