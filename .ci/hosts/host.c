/* A minimal stand-alone Lua host for the CI matrix: the lua-src crates carry the library
 * without lua.c. Usage: host [-e chunk]... [script [args...]]. It opens the standard
 * libraries, sets `arg` as lua.c does, runs each -e chunk and the script, and exits 1 with a
 * traceback on an error. Linked with -Wl,-E so C modules (hotreload, lfs) find the API. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
    fflush(stderr);
    lua_pop(L, 1);
  }
  return status;
}

static int run(lua_State *L, int status, int nargs) {
  int base;
  if (status != LUA_OK) return report(L, status);
  base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  status = lua_pcall(L, nargs, 0, base);
  lua_remove(L, base);
  return report(L, status);
}

int main(int argc, char **argv) {
  int i, script, status = LUA_OK;
  lua_State *L = luaL_newstate();
  if (L == NULL) return 1;
  luaL_openlibs(L);
  for (script = 1; script < argc && strcmp(argv[script], "-e") == 0; script += 2) {}
  lua_createtable(L, argc, 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
  for (i = 1; i < script && status == LUA_OK; i += 2) {
    if (i + 1 >= argc) {
      fprintf(stderr, "host: -e needs an argument\n");
      status = LUA_ERRRUN;
      break;
    }
    status = run(L, luaL_loadstring(L, argv[i + 1]), 0);
  }
  if (status == LUA_OK && script < argc) {
    int n = argc - script - 1;
    status = luaL_loadfile(L, argv[script]);
    if (status == LUA_OK) {
      luaL_checkstack(L, n, "too many arguments");
      for (i = 1; i <= n; i++) lua_pushstring(L, argv[script + i]);
    }
    status = run(L, status, status == LUA_OK ? n : 0);
  }
  lua_close(L);
  return status == LUA_OK ? EXIT_SUCCESS : EXIT_FAILURE;
}
