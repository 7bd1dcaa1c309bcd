//! Every key hotreload keeps in the Lua registry, in one place. A key is the address of a
//! static of this module (`lua_rawgetp`/`lua_rawsetp`), which no other library can collide
//! with; each static has its own value, so the compiler cannot merge two of them.

use std::ffi::c_void;

/// The engine's state userdata of this Lua state (`engine::state`): one per Lua state,
/// however often the module is opened.
pub(crate) static STATE: u8 = 1;
/// The queue userdata its watchers fill (`lua_api::session`).
pub(crate) static QUEUE: u8 = 2;
/// The table of open watcher handles: an open watcher stays alive until closed, even if the
/// program drops its handle.
pub(crate) static OPEN_WATCHERS: u8 = 3;
/// `hotreload.defaults`, the options `reload` and `poll` use when not given.
pub(crate) static DEFAULTS: u8 = 4;
/// The main thread, so the reference walk reaches its frames (Lua 5.2+ keep it in the
/// registry already; LuaJIT does not).
pub(crate) static MAIN_THREAD: u8 = 5;
/// The list of `before_reload` listeners.
pub(crate) static BEFORE: u8 = 6;
/// The list of `on_reload` listeners.
pub(crate) static AFTER: u8 = 7;
/// The pinned modules: name -> why it is never reloaded (`hotreload.pin`).
pub(crate) static PINNED: u8 = 8;
/// The functions of each module's base: name -> { [node + 1] = function } (`engine::base`).
pub(crate) static FUNCTIONS: u8 = 9;

/// The registry key `k` stands for.
pub(crate) fn key(k: &'static u8) -> *const c_void {
    (k as *const u8).cast()
}
