//! What `require` itself is made of, which both loading a new version (`load`) and taking
//! the base of a module `require` loads (`capture`) go through: the searchers, and the
//! globals a chunk assigned.

use std::os::raw::c_int;

use mlua::ffi as lua;

use crate::vm::capi::{self, lua_State};

/// Pushes `package.searchers` (or `package.loaders`) and returns its index, 0 if missing
/// (then nothing is pushed).
///
/// # Safety
/// Three free stack slots.
pub unsafe fn push_searchers(l: *mut lua_State) -> c_int {
    // SAFETY: raw reads from `_LOADED.package`.
    unsafe {
        capi::push_loaded(l);
        capi::push_bytes(l, b"package");
        lua::lua_rawget(l, -2);
        lua::lua_remove(l, -2);
        if lua::lua_type(l, -1) != lua::LUA_TTABLE {
            lua::lua_pop(l, 1);
            return 0;
        }
        for field in [b"searchers".as_slice(), b"loaders"] {
            capi::push_bytes(l, field);
            if lua::lua_rawget(l, -2) == lua::LUA_TTABLE {
                lua::lua_remove(l, -2);
                return lua::lua_gettop(l);
            }
            lua::lua_pop(l, 1);
        }
        lua::lua_pop(l, 1);
        0
    }
}

/// Pushes a shallow raw copy of the table at `t`.
///
/// # Safety
/// Inside `protect` (allocates); `t` absolute.
pub unsafe fn copy_table(l: *mut lua_State, t: c_int) {
    // SAFETY: raw traversal of `t` while writing only to the copy.
    unsafe {
        lua::lua_createtable(l, 0, 64);
        let copy = lua::lua_gettop(l);
        lua::lua_pushnil(l);
        while lua::lua_next(l, t) != 0 {
            lua::lua_pushvalue(l, -2);
            lua::lua_insert(l, -2);
            lua::lua_rawset(l, copy);
        }
    }
}

/// Pushes a table of the keys of `globals` whose value differs from `before` (key -> new
/// value). With `restore`, also puts every global back as it was in `before`.
///
/// # Safety
/// Inside `protect` (allocates); absolute indices.
pub unsafe fn global_delta(
    l: *mut lua_State,
    globals: c_int,
    before: c_int,
    restore: bool,
) -> c_int {
    // SAFETY: each traversal writes only to a table other than the one it walks.
    unsafe {
        lua::lua_createtable(l, 0, 4);
        let delta = lua::lua_gettop(l);
        lua::lua_pushnil(l);
        while lua::lua_next(l, globals) != 0 {
            lua::lua_pushvalue(l, -2);
            lua::lua_rawget(l, before);
            if lua::lua_rawequal(l, -1, -2) == 0 {
                lua::lua_pushvalue(l, -3);
                lua::lua_pushvalue(l, -3);
                lua::lua_rawset(l, delta);
            }
            lua::lua_pop(l, 2);
        }
        if restore {
            lua::lua_pushnil(l);
            while lua::lua_next(l, delta) != 0 {
                lua::lua_pop(l, 1);
                lua::lua_pushvalue(l, -1);
                lua::lua_pushvalue(l, -1);
                lua::lua_rawget(l, before);
                lua::lua_rawset(l, globals);
            }
            // globals the chunk set to nil
            lua::lua_pushnil(l);
            while lua::lua_next(l, before) != 0 {
                lua::lua_pushvalue(l, -2);
                if lua::lua_rawget(l, globals) == lua::LUA_TNIL {
                    lua::lua_pushvalue(l, -3);
                    lua::lua_pushvalue(l, -3);
                    lua::lua_rawset(l, globals);
                }
                lua::lua_pop(l, 2);
            }
        }
        delta
    }
}
