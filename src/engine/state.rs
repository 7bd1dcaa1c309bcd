//! What the engine remembers about the modules of one Lua state: their bases, which are
//! being reloaded, the files they were loaded from. It lives in a userdata (`push_new`) that
//! the exported functions and the `require` wrappers hold as an upvalue, so two states in
//! one process share nothing, and its `__gc` (at `lua_close`) frees it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::raw::c_int;
use std::path::PathBuf;

use crate::engine::base::Snapshot;
use crate::engine::graph::Graph;
use crate::engine::ptrmap::PtrSet;
use crate::vm::capi::{self, lua_State};

#[derive(Default)]
pub(crate) struct State {
    /// Base of the three-way merge, per module name: its last freshly loaded version.
    pub(crate) snapshots: HashMap<Box<[u8]>, Snapshot>,
    /// Modules being reloaded right now, and which step their reload is in: a reload of one
    /// of them from code that step runs (its top level, a hook, a listener, a finalizer) is
    /// refused, and the message says which.
    pub(crate) busy: HashMap<Box<[u8]>, Phase>,
    /// The stop set (`plan::stop_set`) the base of a module `require` loads is taken with:
    /// made by the first such load after a batch, then each module loaded adds its value,
    /// so loading `n` modules reads `package.loaded` once, not `n` times.
    pub(crate) loaded_values: Option<PtrSet>,
    /// The names each file was loaded under by `require` (canonical path -> names): `poll`
    /// reloads these whatever `package.path` would call the file (`require "game/util"`,
    /// an alias, a custom template).
    pub(crate) files: HashMap<PathBuf, Vec<Box<[u8]>>>,
    /// Where the next batch goes on checking for dropped modules (`base::prune_functions`).
    pub(crate) prune_cursor: Option<Box<[u8]>>,
    /// The hash of the file each module was last loaded from, where it is known for sure
    /// (`require`, or a reload by `poll`): a save that leaves the bytes as they were does
    /// not reload it. A reload by `reload` forgets it (the source may not be the file).
    pub(crate) contents: HashMap<Box<[u8]>, u64>,
    /// Which module's top level required which (`graph`).
    pub(crate) graph: Graph,
    /// The modules whose top level runs under `require` right now, outermost first, with
    /// the thread each runs on (the loader wrappers of `capture`); entries of loads that
    /// raised are dropped lazily.
    pub(crate) requiring: Vec<(usize, Box<[u8]>)>,
    /// The module whose new top level a reload runs right now, if any.
    pub(crate) reloading: Option<Reloading>,
    /// How many reloads loaded a chunk compiled ahead (`hotreload.stats`).
    pub(crate) compiled_ahead: u64,
}

/// A reload running a module's new top level: on which thread, and how many `require`
/// top levels were running there when it started (requires above those are their own).
#[derive(Clone, Debug)]
pub(crate) struct Reloading {
    pub(crate) name: Box<[u8]>,
    pub(crate) thread: usize,
    pub(crate) depth: usize,
}

impl State {
    /// Records that module `name` was loaded from `file` (canonical).
    pub(crate) fn loaded_from(&mut self, file: PathBuf, name: &[u8]) {
        let names = self.files.entry(file).or_default();
        if !names.iter().any(|n| **n == *name) {
            names.push(name.into());
        }
    }
}

/// The step a reload is in, as a refused nested reload explains it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Loading,
    Consenting,
    Merging,
    Reporting,
}

impl Phase {
    pub(crate) fn doing(self) -> &'static str {
        match self {
            Phase::Loading => "while its new top level ran",
            Phase::Consenting => "while its before_reload listeners or its __unload hook ran",
            Phase::Merging => "while it was merged (its __reload hook, or a finalizer)",
            Phase::Reporting => "while its on_reload listeners ran",
        }
    }
}

pub(crate) type StateCell = RefCell<State>;

/// Pushes a new state userdata.
///
/// # Safety
/// Inside a protected call (allocates); three free stack slots.
pub(crate) unsafe fn push_new(l: *mut lua_State) {
    // SAFETY: forwarded.
    unsafe { capi::push_boxed::<StateCell>(l, c"hotreload.state") }
}

/// The state behind the userdata at `idx`; `None` once it has been collected (a function
/// called from a finalizer during `lua_close`).
///
/// # Safety
/// `idx` must hold a state userdata made by `push_new`.
pub(crate) unsafe fn get<'a>(l: *mut lua_State, idx: c_int) -> Option<&'a StateCell> {
    // SAFETY: forwarded.
    unsafe { capi::get_boxed::<StateCell>(l, idx) }
}
