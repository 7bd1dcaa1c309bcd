//! Holding the collector during a reload: no finalizer runs user code while a merge is half
//! planned or half applied, and the walk reads tables no collection step changes.

use std::os::raw::c_int;

use mlua::ffi::*;

use super::capi::GC_ISRUNNING;

/// Keeps the collector from taking any step for the lifetime of the guard, so that no
/// finalizer runs user code while a merge is half planned or half applied, and the walk reads
/// tables no collection step changes. Does nothing if the program stopped the collector.
///
/// Stopping it (`LUA_GCSTOP`) would do, but restarting it makes the collector due at once
/// (5.3 and 5.4 set its debt to zero), so every reload would start a collection step the
/// program's pace had not asked for. Where the debt can be moved by the API (5.3 and 5.4,
/// 64-bit), the guard instead lowers it by far more than a reload allocates and raises it
/// back by the same amount: the collector then resumes with the debt it would have had, as
/// if the reload's allocations had happened without a pause.
pub struct GcPause {
    l: *mut lua_State,
    held: Hold,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// The collector was not running; nothing to undo.
    Nothing,
    /// Its debt is lowered by `DEBT_SHIFT_KB`.
    Debt,
    /// It is stopped.
    Stopped,
}

/// How far the debt is lowered: 2^30 KB (1 TB), more than any reload can allocate. Only for
/// 64-bit builds, where Lua's debt counter (`l_mem`) holds it.
const DEBT_SHIFT_KB: c_int = 1 << 30;

/// Whether the collector can be held by its debt (see `GcPause`).
const HOLD_BY_DEBT: bool =
    cfg!(any(feature = "lua53", feature = "lua54")) && cfg!(target_pointer_width = "64");

impl GcPause {
    /// # Safety
    /// The guard must be dropped while `l` is still open, outside any protected call that
    /// could be unwound past it.
    pub unsafe fn new(l: *mut lua_State) -> GcPause {
        let mut pause = GcPause { l, held: Hold::Nothing };
        // SAFETY: forwarded.
        unsafe { pause.hold() };
        pause
    }

    /// Runs `f` (user code: hooks, listeners) with the collector as the program left it, and
    /// holds it again afterwards, whatever `f` did to it.
    ///
    /// # Safety
    /// As `new`; if `f` unwinds, the collector stays released.
    pub unsafe fn lifted<R>(&mut self, f: impl FnOnce() -> R) -> R {
        // SAFETY: forwarded.
        unsafe {
            self.release();
            let r = f();
            self.hold();
            r
        }
    }

    unsafe fn hold(&mut self) {
        // SAFETY: lua_gc with these options neither raises nor allocates; a negative step
        // only lowers the debt (`luaC_checkGC` then has nothing to do).
        unsafe {
            if gc(self.l, GC_ISRUNNING) == 0 {
                self.held = Hold::Nothing;
            } else if HOLD_BY_DEBT {
                gc_step(self.l, -DEBT_SHIFT_KB);
                self.held = Hold::Debt;
            } else {
                gc(self.l, LUA_GCSTOP);
                self.held = Hold::Stopped;
            }
        }
    }

    unsafe fn release(&mut self) {
        // SAFETY: RESTART does not raise; raising the debt back may run a collection step,
        // which may call finalizers (they run protected, as in any allocation).
        unsafe {
            match self.held {
                Hold::Nothing => {}
                Hold::Debt => gc_step(self.l, DEBT_SHIFT_KB),
                Hold::Stopped => {
                    gc(self.l, LUA_GCRESTART);
                }
            }
        }
        self.held = Hold::Nothing;
    }
}

impl Drop for GcPause {
    fn drop(&mut self) {
        // SAFETY: `new`'s contract keeps the state open.
        unsafe { self.release() };
    }
}

/// `LUA_GCSTEP` with `kb` kilobytes: on 5.3 and 5.4 (only used there), adds `kb * 1024` to
/// the collector's debt and takes a step if the debt is then positive.
unsafe fn gc_step(l: *mut lua_State, kb: c_int) {
    // SAFETY: forwarded.
    unsafe {
        lua_gc(l, LUA_GCSTEP, kb);
    }
}

#[cfg(any(feature = "lua54", feature = "lua55"))]
unsafe fn gc(l: *mut lua_State, what: c_int) -> c_int {
    // SAFETY: forwarded.
    unsafe { lua_gc(l, what) }
}

#[cfg(not(any(feature = "lua54", feature = "lua55")))]
unsafe fn gc(l: *mut lua_State, what: c_int) -> c_int {
    // SAFETY: forwarded.
    unsafe { lua_gc(l, what, 0) }
}
