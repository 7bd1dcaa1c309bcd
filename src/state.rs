//! Per-`lua_State` data: what hotreload remembers about the modules of one Lua state. It lives
//! in a userdata that every exported function holds as upvalue 1, so two states in one
//! process share nothing, and the state's `__gc` (at `lua_close`) frees it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::raw::c_int;
use std::path::PathBuf;
use std::sync::Arc;

use crate::ffi::{self, lua_State};
use crate::ptrmap::PtrSet;
use crate::queue::Queue;
use crate::reload::base::Snapshot;

#[derive(Default)]
pub struct State {
    /// Base of the three-way merge, per module name: its last freshly loaded version.
    pub snapshots: HashMap<Box<[u8]>, Snapshot>,
    /// Modules being reloaded right now, and which step their reload is in: a reload of one
    /// of them from code that step runs (its top level, a hook, a listener, a finalizer) is
    /// refused, and the message says which.
    pub busy: HashMap<Box<[u8]>, Phase>,
    /// The stop set (`plan::stop_set`) the base of a module `require` loads is taken with:
    /// made by the first such load after a batch, then each module loaded adds its value,
    /// so loading `n` modules reads `package.loaded` once, not `n` times.
    pub loaded_values: Option<PtrSet>,
    /// The names each file was loaded under by `require` (canonical path -> names): `poll`
    /// reloads these whatever `package.path` would call the file (`require "game/util"`,
    /// an alias, a custom template).
    pub files: HashMap<PathBuf, Vec<Box<[u8]>>>,
}

impl State {
    /// Records that module `name` was loaded from `file` (canonical).
    pub fn loaded_from(&mut self, file: PathBuf, name: &[u8]) {
        let names = self.files.entry(file).or_default();
        if !names.iter().any(|n| **n == *name) {
            names.push(name.into());
        }
    }
}

/// The step a reload is in, as a refused nested reload explains it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Loading,
    Consenting,
    Merging,
    Reporting,
}

impl Phase {
    pub fn doing(self) -> &'static str {
        match self {
            Phase::Loading => "while its new top level ran",
            Phase::Consenting => "while its before_reload listeners or its __unload hook ran",
            Phase::Merging => "while it was merged (its __reload hook, or a finalizer)",
            Phase::Reporting => "while its on_reload listeners ran",
        }
    }
}

pub type StateCell = RefCell<State>;

/// What the state userdata points to. The queue sits outside the `RefCell`: watcher threads
/// hold it, and an idle `poll()` only reads its length.
#[derive(Default)]
pub struct StateBox {
    pub queue: Arc<Queue>,
    pub data: StateCell,
}

/// Pushes a new state userdata.
///
/// # Safety
/// Inside a protected call (allocates); three free stack slots.
pub unsafe fn push_new(l: *mut lua_State) {
    // SAFETY: the userdata is sized for one pointer and initialised before anything else can
    // run; its metatable's `__gc` is the only place the box is freed.
    unsafe {
        let ud = ffi::lua_newuserdata(l, size_of::<*mut StateBox>()).cast::<*mut StateBox>();
        ud.write(std::ptr::null_mut());
        ffi::lua_createtable(l, 0, 2);
        ffi::lua_pushcfunction(l, gc);
        ffi::lua_setfield(l, -2, c"__gc".as_ptr());
        ffi::lua_pushlstring(l, c"hotreload.state".as_ptr(), 15);
        ffi::lua_setfield(l, -2, c"__name".as_ptr());
        ffi::lua_setmetatable(l, -2);
        ud.write(Box::into_raw(Box::default()));
    }
}

unsafe extern "C-unwind" fn gc(l: *mut lua_State) -> c_int {
    // SAFETY: only ever set as `__gc` of a state userdata, which holds a box pointer or null.
    unsafe {
        let ud = ffi::lua_touserdata(l, 1).cast::<*mut StateBox>();
        if !ud.is_null() && !(*ud).is_null() {
            let boxed = Box::from_raw(*ud);
            *ud = std::ptr::null_mut();
            drop(boxed);
        }
    }
    0
}

/// The state behind the userdata at `idx`; `None` once it has been collected (a function
/// called from a finalizer during `lua_close`).
///
/// # Safety
/// `idx` must hold a state userdata made by `push_new`.
pub unsafe fn get<'a>(l: *mut lua_State, idx: c_int) -> Option<&'a StateBox> {
    // SAFETY: the box lives until `gc` nulls the pointer.
    unsafe {
        let ud = ffi::lua_touserdata(l, idx).cast::<*mut StateBox>();
        if ud.is_null() { None } else { (*ud).as_ref() }
    }
}
