//! The queue of changed files of one Lua state, which its watchers fill and `poll` empties,
//! in a userdata the exported functions hold as an upvalue beside the engine's state.

use std::os::raw::c_int;
use std::sync::Arc;

use crate::vm::capi::{self, lua_State};
use crate::watch::queue::Queue;

/// Pushes a new queue userdata.
///
/// # Safety
/// Inside a protected call (allocates); three free stack slots.
pub(crate) unsafe fn push_new(l: *mut lua_State) {
    // SAFETY: forwarded.
    unsafe { capi::push_boxed::<Arc<Queue>>(l, c"hotreload.queue") }
}

/// The queue behind the userdata at `idx`; `None` once it has been collected.
///
/// # Safety
/// `idx` must hold a queue userdata made by `push_new`.
pub(crate) unsafe fn get<'a>(l: *mut lua_State, idx: c_int) -> Option<&'a Arc<Queue>> {
    // SAFETY: forwarded.
    unsafe { capi::get_boxed::<Arc<Queue>>(l, idx) }
}
