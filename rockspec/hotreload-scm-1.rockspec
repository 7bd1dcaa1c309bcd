rockspec_format = "3.0"
package = "hotreload"
version = "scm-1"
source = {
  url = "git+https://github.com/hotreload-lua/hotreload.git",
}
description = {
  summary = "Reload edited Lua modules in a running program, keeping its state",
  detailed = [[
A native module (Rust, mlua) for Lua 5.4, 5.5, LuaJIT and Lua 5.3: hotreload.reload(name) merges
the new version of a module into the running one (same tables, new functions, kept state,
old functions replaced everywhere), hotreload.watch(dir) + hotreload.poll() apply saved
files once per frame.
]],
  homepage = "https://github.com/hotreload-lua/hotreload",
  license = "MIT",
  labels = { "hot-reload", "live-coding", "development" },
}
dependencies = {
  "lua >= 5.1, < 5.6",
}
build_dependencies = {}
build = {
  -- No luarocks build backend for Rust is needed (none can be downloaded offline): the
  -- command asks the interpreter luarocks installs for which mlua feature to build.
  type = "command",
  build_command = [[
FEAT=`"$(LUA)" -e "print(jit and 'luajit' or ('lua' .. _VERSION:gsub('Lua 5%.', '5')))"` &&
if [ "$FEAT" = lua51 ]; then echo "hotreload: PUC Lua 5.1 has no lua_upvaluejoin; install for LuaJIT instead" >&2; exit 1; fi &&
echo "hotreload: building for $FEAT (interpreter $(LUA))" &&
cargo build --release --locked --no-default-features --features "$FEAT,module" --target-dir "target/$FEAT" &&
mkdir -p target/rock && { cp "target/$FEAT/release/libhotreload.so" target/rock/hotreload.so 2>/dev/null || cp "target/$FEAT/release/libhotreload.dylib" target/rock/hotreload.so; }
]],
  install_command = [[mkdir -p "$(LIBDIR)" && cp target/rock/hotreload.so "$(LIBDIR)/hotreload.so"]],
  install = {
    lua = {
      ["hotreload.love"] = "lua/hotreload/love.lua",
      ["hotreload.nvim"] = "lua/hotreload/nvim.lua",
      ["hotreload.nginx"] = "lua/hotreload/nginx.lua",
      ["hotreload.haproxy"] = "lua/hotreload/haproxy.lua",
      ["hotreload.helper"] = "lua/hotreload/helper.lua",
    },
  },
}
