//! The Lua-facing functions: argument checks and the error convention at the boundary.
//! Misuse (wrong argument types) raises a Lua error; expected failures return
//! `nil, message`; nothing owned by Rust is alive when an error is raised.

use std::ffi::CStr;
use std::os::raw::c_int;

use mlua::ffi as lua;

use crate::engine::{self, capture, state};
use crate::vm::access;
use crate::vm::capi::{self, lua_CFunction, lua_State};
use crate::vm::registry::{DEFAULTS, MAIN_THREAD, OPEN_WATCHERS, QUEUE, STATE, key};

mod dependents;
mod poll;
mod reload;
mod session;
mod watch;

/// The exported functions, by their Lua name.
const EXPORTS: &[(&CStr, lua_CFunction)] = &[
    (c"reload", reload::reload),
    (c"watch", watch::watch),
    (c"unwatch", watch::unwatch),
    (c"poll", watch::poll),
    (c"pending", watch::pending),
    (c"stats", watch::stats),
    (c"on_reload", reload::on_reload),
    (c"before_reload", reload::before_reload),
    (c"pin", reload::pin),
    (c"dependents", dependents::dependents),
];

/// The upvalues every export has: the engine's state userdata and the queue userdata.
const STATE_UPVALUE: c_int = 1;
const QUEUE_UPVALUE: c_int = 2;

/// Builds the module table: every export as a C closure over the state and queue userdata.
/// Opening the module again in the same Lua state (after `package.loaded.hotreload = nil`)
/// gives a new table over the same ones: the same bases, watchers, listeners and defaults.
///
/// # Safety
/// Inside a protected call; leaves the table on the stack.
pub(crate) unsafe fn open(l: *mut lua_State) -> c_int {
    // SAFETY: plain table building on fresh tables and the registry (no metamethods).
    unsafe {
        lua::luaL_checkstack(l, 24, std::ptr::null());
        lua::lua_createtable(l, 0, EXPORTS.len() as c_int + 5);
        let module = lua::lua_gettop(l);
        if !registry_has(l, &STATE, lua::LUA_TUSERDATA) {
            state::push_new(l);
            lua::lua_rawsetp(l, lua::LUA_REGISTRYINDEX, key(&STATE));
        }
        if !registry_has(l, &QUEUE, lua::LUA_TUSERDATA) {
            session::push_new(l);
            lua::lua_rawsetp(l, lua::LUA_REGISTRYINDEX, key(&QUEUE));
        }
        lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&STATE));
        lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&QUEUE));
        let state = module + 1;
        for (name, f) in EXPORTS {
            lua::lua_pushvalue(l, state);
            lua::lua_pushvalue(l, state + 1);
            lua::lua_pushcclosure(l, *f, 2);
            lua::lua_setfield(l, module, name.as_ptr());
        }
        capture::wrap_searchers(l, state);
        lua::lua_pop(l, 2);
        watch::register_watcher_type(l);
        if !registry_has(l, &OPEN_WATCHERS, lua::LUA_TTABLE) {
            lua::lua_createtable(l, 0, 0);
            lua::lua_rawsetp(l, lua::LUA_REGISTRYINDEX, key(&OPEN_WATCHERS));
        }
        if !registry_has(l, &DEFAULTS, lua::LUA_TTABLE) {
            lua::lua_createtable(l, 0, 1);
            lua::lua_pushboolean(l, 1);
            lua::lua_setfield(l, -2, c"replace".as_ptr());
            lua::lua_rawsetp(l, lua::LUA_REGISTRYINDEX, key(&DEFAULTS));
        }
        lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&DEFAULTS));
        lua::lua_setfield(l, module, c"defaults".as_ptr());
        note_main_thread(l);
        capi::push_bytes(l, env!("CARGO_PKG_VERSION").as_bytes());
        lua::lua_setfield(l, module, c"_VERSION".as_ptr());
        capi::push_bytes(l, capi::FLAVOR.as_bytes());
        lua::lua_setfield(l, module, c"flavor".as_ptr());
        let walk: &[u8] = if access::reads_tables_in_place(l) { b"in place" } else { b"lua_next" };
        capi::push_bytes(l, walk);
        lua::lua_setfield(l, module, c"table_walk".as_ptr());
        let slots: &[u8] = if access::reads_slots_in_place(l) { b"in place" } else { b"api" };
        capi::push_bytes(l, slots);
        lua::lua_setfield(l, module, c"slot_reads".as_ptr());
        1
    }
}

/// Reload options: `opts` (a table at `opts`, or 0 for none) over `hotreload.defaults`.
/// Raises if an option has the wrong type.
unsafe fn options(l: *mut lua_State, opts: c_int) -> engine::Options {
    let mut o = engine::Options::default();
    // SAFETY: raw reads of two tables; one push per read, popped.
    unsafe {
        lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&DEFAULTS));
        let defaults = lua::lua_gettop(l);
        for (table, what) in [(defaults, c"hotreload.defaults"), (opts, c"reload")] {
            if table == 0 || lua::lua_type(l, table) != lua::LUA_TTABLE {
                continue;
            }
            for (name, flag) in [
                (c"replace", &mut o.replace),
                (c"binary", &mut o.binary),
                (c"dependents", &mut o.dependents),
                (c"changes", &mut o.changes),
            ] {
                lua::lua_pushstring(l, name.as_ptr());
                match lua::lua_rawget(l, table) {
                    lua::LUA_TNIL => {}
                    lua::LUA_TBOOLEAN => *flag = lua::lua_toboolean(l, -1) != 0,
                    _ => {
                        lua::luaL_error(
                            l,
                            c"bad option '%s' to '%s' (boolean expected, got %s)".as_ptr(),
                            name.as_ptr(),
                            what.as_ptr(),
                            lua::luaL_typename(l, -1),
                        );
                    }
                }
                lua::lua_pop(l, 1);
            }
        }
        lua::lua_pop(l, 1);
    }
    o
}

/// Records the main thread in the registry the first time any function runs on it (LuaJIT
/// keeps no reference to it there; the walk needs one to reach its locals).
unsafe fn note_main_thread(l: *mut lua_State) {
    // SAFETY: a raw read, and a raw write of a value that is on the stack; balanced.
    unsafe {
        if registry_has(l, &MAIN_THREAD, lua::LUA_TTHREAD) {
            return;
        }
        if lua::lua_pushthread(l) == 1 {
            lua::lua_rawsetp(l, lua::LUA_REGISTRYINDEX, key(&MAIN_THREAD));
        } else {
            lua::lua_pop(l, 1);
        }
    }
}

/// Whether the registry holds a value of type `t` at key `k`.
unsafe fn registry_has(l: *mut lua_State, k: &'static u8, t: c_int) -> bool {
    // SAFETY: a raw read, popped.
    unsafe {
        let found = lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(k)) == t;
        lua::lua_pop(l, 1);
        found
    }
}

/// Raises `message` as a Lua error (nothing owned stays alive).
unsafe fn raise(l: *mut lua_State, message: &str) -> c_int {
    // SAFETY: the message is a borrowed &str, copied into Lua before lua_error.
    unsafe {
        capi::push_bytes(l, message.as_bytes());
        lua::lua_error(l)
    }
}
