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
];

/// `luaopen_hotreload`: the module table.
#[cfg_attr(feature = "module", mlua::lua_module)]
pub fn hotreload(lua: &Lua) -> LuaResult<Table> {
    // SAFETY: `open` only builds a table; exec_raw runs it protected and takes the result.
    unsafe {
        lua.exec_raw((), |l| {
            api::open(l, EXPORTS);
        })
    }
}
