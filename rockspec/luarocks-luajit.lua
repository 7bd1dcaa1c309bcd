-- luarocks configuration that installs for LuaJIT with Debian's luarocks 3.8 (whose 5.1
-- target is PUC lua5.1 otherwise):
--   LUAROCKS_CONFIG=rockspec/luarocks-luajit.lua luarocks --lua-version=5.1 make \
--     rockspec/hotreload-scm-1.rockspec --tree <dir>
lua_interpreter = "luajit"
variables = {
  LUA_DIR = "/usr",
  LUA_BINDIR = "/usr/bin",
  LUA_INCDIR = "/usr/include/luajit-2.1",
}
