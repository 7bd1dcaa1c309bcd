//! hotreload: pick up edited Lua code in a running program without losing its state.
//!
//! A native Lua module for Lua 5.4, 5.5, 5.3 and LuaJIT. `require "hotreload"` gives:
//!
//! ```lua
//! local hotreload = require "hotreload"
//! local game = require "game"          -- loaded as usual
//! -- ... edit game.lua ...
//! assert(hotreload.reload("game"))     -- same table, new functions, state kept
//! ```
//!
//! The crate in four folders, dependencies pointing one way (`docs/internals.md` has the
//! map): `lua_api` (every function Lua calls, argument checks, registry keys) uses `engine`
//! (a batch of reloads: load, plan, apply, walk) and `watch` (the notify thread, the queue
//! of changed files, file to module names); `engine` and `watch` read the VM only through
//! `vm` (the C API shims, and the probed in-place readers).

mod engine;
mod lua_api;
mod vm;
mod watch;

#[cfg(feature = "module")]
use std::os::raw::c_int;

/// `luaopen_hotreload`: checks that the host is the Lua this module was built for before
/// anything else (a Lua 5.4 build in a Lua 5.5 host, or the other way round, links, and
/// would crash at its first call into the API), then builds the module table.
///
/// # Safety
/// Called by `require` (or `luaL_requiref`) with a Lua state.
#[cfg(feature = "module")]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn luaopen_hotreload(l: *mut mlua::ffi::lua_State) -> c_int {
    // SAFETY: `host_mismatch` only asks `lua_version`, whose signature the builds it tells
    // apart share; the rest runs protected, and raises only with nothing owned alive.
    unsafe {
        let message = match vm::capi::host_mismatch(l) {
            Some(message) => message,
            None => match vm::capi::protect(l, 0, &mut |l| lua_api::open(l)) {
                Ok(_) => return 1,
                Err(message) => message,
            },
        };
        vm::capi::push_bytes(l, message.as_bytes());
        drop(message);
        mlua::ffi::lua_error(l)
    }
}

/// For the integration tests in `tests/`: the module opened in an mlua state, and the
/// protected call.
#[doc(hidden)]
pub mod testing {
    use mlua::{Lua, Result, Table};

    pub use crate::vm::capi::protect;

    /// How many directories under `dir` the process's OS watcher watches.
    pub fn watched_dirs_under(dir: &std::path::Path) -> usize {
        crate::watch::hub::watched_under(dir)
    }

    /// The module table, opened in `lua` (a host uses `luaopen_hotreload`).
    pub fn open(lua: &Lua) -> Result<Table> {
        // SAFETY: `open` only builds a table; exec_raw runs it protected and takes the result.
        unsafe {
            lua.exec_raw((), |l| {
                crate::lua_api::open(l);
            })
        }
    }
}
