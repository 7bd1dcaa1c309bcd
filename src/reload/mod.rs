//! The reload engine. A reload flows through four steps, each in its own file:
//!
//! 1. `load`: find the module as `require` would and run its new version in isolation;
//! 2. `plan`: walk new and running versions in lockstep and decide every slot, against the
//!    `base` mirror of the previous version (three-way merge);
//! 3. `apply`: write the plan into the running program and join upvalue cells;
//! 4. `walk` (unless turned off): replace the old functions wherever the VM still holds them,
//!    then flush LuaJIT's compiled code;
//! 5. the new version's mirror becomes the base of the next reload.
//!
//! Nothing is written before step 3, so a failure anywhere before it leaves the program as
//! it was (rule 10).

pub mod apply;
pub mod base;
pub mod load;
pub mod plan;

use std::os::raw::c_int;

use crate::capture;
use crate::error::{Error, ErrorKind};
use crate::ffi::{self, GcPause, lua_State};
use crate::state::StateCell;
use crate::walk;
use base::Snapshot;
pub use plan::Counts;
use plan::Planner;

/// How to reload (`hotreload.reload(name, opts)`, `hotreload.defaults`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Replace old functions everywhere in the VM, not only in the module.
    pub replace: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { replace: true }
    }
}

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub merge: Counts,
    pub walk: walk::Outcome,
}

/// Reloads (or first loads) module `name`. On success the module value is left on top of
/// the stack and a report of what changed is returned.
///
/// # Safety
/// `state` is the absolute index of the state userdata behind `cell`; a few free stack slots.
pub unsafe fn reload(
    l: *mut lua_State,
    cell: &StateCell,
    state: c_int,
    name: &[u8],
    opts: Options,
) -> Result<Report, Error> {
    {
        let Ok(mut st) = cell.try_borrow_mut() else {
            return Err(Error::new(ErrorKind::Internal, name, "state in use"));
        };
        if st.busy.iter().any(|b| **b == *name) {
            return Err(Error::new(ErrorKind::Busy, name, ""));
        }
        st.busy.push(name.into());
    }
    let old = cell.try_borrow_mut().ok().and_then(|mut st| st.snapshots.remove(name));
    let empty = Snapshot::default();
    let base = old.as_ref().unwrap_or(&empty);

    let mut failure: Option<Error> = None;
    let mut gc: Option<GcPause> = None;
    let mut result: Option<(Snapshot, Report)> = None;
    // SAFETY: everything the closure owns lives in this frame (failure, gc, result), so an
    // error unwinding out of the protected call loses nothing that needs dropping.
    let outcome = unsafe {
        ffi::lua_pushvalue(l, state);
        ffi::protect(l, 1, &mut |l| {
            capture::wrap_searchers(l, 1);
            let loader = ffi::lua_gettop(l) + 1;
            if let Err(e) = load::find_loader(l, name) {
                failure = Some(match e {
                    load::LoadError::NotFound(m) => Error::new(ErrorKind::NotFound, name, m),
                    load::LoadError::Failed(m) => Error::new(ErrorKind::Load, name, m),
                    load::LoadError::Native => Error::new(ErrorKind::Native, name, ""),
                });
                return 0;
            }
            let new = match load::run(l, name, loader) {
                Ok(new) => new,
                Err(m) => {
                    failure = Some(Error::new(ErrorKind::Load, name, m));
                    return 0;
                }
            };
            ffi::push_loaded(l);
            let loaded = ffi::lua_gettop(l);
            ffi::push_bytes(l, name);
            ffi::lua_rawget(l, loaded);
            let live = loaded + 1;

            gc = Some(GcPause::new(l));
            let stop = plan::stop_set(l, name);
            let mut planner = Planner::new(l, base, stop);
            if let Err(m) = planner.root(l, live, new.value) {
                failure = Some(Error::new(ErrorKind::Merge, name, m));
                return 0;
            }
            planner.globals(l, Some(new.globals), new.delta);
            let mut plan = planner.finish(l);

            let _undo = apply::apply(l, &mut plan);
            ffi::push_bytes(l, name);
            apply::push(l, &plan, plan.root, true);
            ffi::lua_rawset(l, loaded);
            let walked =
                if opts.replace { walk::replace(l, std::slice::from_mut(&mut plan)) } else { Default::default() };
            ffi::flush_jit(l);
            let report = Report { merge: plan.counts, walk: walked };
            result = Some((plan.mirror, report));

            ffi::push_bytes(l, name);
            ffi::lua_rawget(l, loaded);
            1
        })
    };
    drop(gc);

    let restore = |snapshot: Option<Snapshot>| {
        if let Ok(mut st) = cell.try_borrow_mut() {
            st.busy.retain(|b| **b != *name);
            if let Some(s) = snapshot {
                st.snapshots.insert(name.into(), s);
            }
        }
    };
    match (outcome, failure, result) {
        (Ok(_), None, Some((mirror, report))) => {
            restore(Some(mirror));
            Ok(report)
        }
        (Ok(_), failure, _) => {
            restore(old);
            Err(failure.unwrap_or_else(|| Error::new(ErrorKind::Internal, name, "no result")))
        }
        (Err(message), _, _) => {
            restore(old);
            Err(Error::new(ErrorKind::Internal, name, message))
        }
    }
}
