//! hotreload: pick up edited Lua code in a running program without losing its state.
//!
//! A native Lua module for Lua 5.4 and LuaJIT (5.2/5.3 build too). `require "hotreload"`
//! gives:
//!
//! ```lua
//! local hotreload = require "hotreload"
//! local game = require "game"          -- loaded as usual
//! -- ... edit game.lua ...
//! assert(hotreload.reload("game"))     -- same table, new functions, state kept
//! ```
//!
//! How a reload flows: [`api`] checks arguments, [`reload`] loads the new version in
//! isolation (`reload::load`), plans the merge against the base the previous version left
//! (`reload::plan`, `reload::base`), asks the hooks (`reload::hooks`), applies it
//! (`reload::apply`), replaces the old functions elsewhere ([`walk`]), and keeps the new base.
//! [`capture`] records the base of every module `require` loads.

pub mod api;
pub mod capture;
#[cfg(any(feature = "luajit", feature = "lua54"))]
pub mod cells;
pub mod error;
pub mod ffi;
#[cfg(feature = "luajit")]
pub mod jitraw;
#[cfg(feature = "luajit")]
pub mod jittable;
pub mod modname;
pub mod poll;
pub mod proto;
pub mod ptrmap;
pub mod queue;
#[cfg(feature = "lua54")]
pub mod rawslot;
#[cfg(feature = "lua54")]
pub mod rawtable;
pub mod reload;
pub mod state;
#[cfg(any(feature = "luajit", feature = "lua54"))]
pub mod tableprobe;
pub mod walk;
pub mod watch;

use std::ffi::CStr;
#[cfg(feature = "module")]
use std::os::raw::c_int;

use mlua::{Lua, Result as LuaResult, Table};

/// The exported functions, by their Lua name.
pub const EXPORTS: &[(&CStr, ffi::lua_CFunction)] = &[
    (c"reload", api::reload),
    (c"watch", api::watch),
    (c"unwatch", api::unwatch),
    (c"poll", api::poll),
    (c"pending", api::pending),
    (c"on_reload", api::on_reload),
    (c"before_reload", api::before_reload),
    (c"pin", api::pin),
];

/// `luaopen_hotreload`: checks that the host is the Lua this module was built for before
/// anything else (a Lua 5.4 build in a Lua 5.5 host, or the other way round, links, and
/// would crash at its first call into the API), then builds the module table.
///
/// # Safety
/// Called by `require` (or `luaL_requiref`) with a Lua state.
#[cfg(feature = "module")]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn luaopen_hotreload(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: `host_version` only asks `lua_version`, whose signature the builds this check
    // tells apart share; the rest runs protected, and raises only with nothing owned alive.
    unsafe {
        let message = match ffi::host_mismatch(l) {
            Some(message) => message,
            None => match ffi::protect(l, 0, &mut |l| api::open(l, EXPORTS)) {
                Ok(_) => return 1,
                Err(message) => message,
            },
        };
        ffi::push_bytes(l, message.as_bytes());
        drop(message);
        ffi::lua_error(l)
    }
}

/// The module table, opened in an mlua state (the tests' way in; a host uses
/// [`luaopen_hotreload`]).
pub fn hotreload(lua: &Lua) -> LuaResult<Table> {
    // SAFETY: `open` only builds a table; exec_raw runs it protected and takes the result.
    unsafe {
        lua.exec_raw((), |l| {
            api::open(l, EXPORTS);
        })
    }
}
