//! Applying a planned merge: the only place that writes to the running program. It runs no
//! user code and raises nothing but memory errors, so a plan that exists is applied whole.

use std::os::raw::c_int;

use super::plan::{Act, Plan, Pv, push_int};
use crate::ffi::{self, Val, lua_State, read};

/// Performs every write of `plan` and joins the upvalue cells.
///
/// # Safety
/// Inside `protect`, with the plan's anchor table still at `plan.anchors`; the collector is
/// paused (no finalizer may run between two writes).
pub unsafe fn apply(l: *mut lua_State, plan: &Plan) {
    // SAFETY: every operand is an anchored object or inline data; each arm is stack-neutral.
    unsafe {
        ffi::luaL_checkstack(l, 8, c"hotreload: Lua stack exhausted".as_ptr());
        for act in &plan.acts {
            match *act {
                Act::Set { t, k, v } => {
                    push_slot(l, plan, t);
                    push(l, plan, k, true);
                    push(l, plan, v, true);
                    ffi::lua_rawset(l, -3);
                    ffi::lua_pop(l, 1);
                }
                Act::Unset { t, k } => {
                    push_slot(l, plan, t);
                    push(l, plan, k, false);
                    ffi::lua_pushnil(l);
                    ffi::lua_rawset(l, -3);
                    ffi::lua_pop(l, 1);
                }
                Act::Meta { t, mt } => {
                    push_slot(l, plan, t);
                    push(l, plan, mt, true);
                    ffi::lua_setmetatable(l, -2);
                    ffi::lua_pop(l, 1);
                }
                Act::Up { f, n, v } => {
                    push_slot(l, plan, f);
                    push(l, plan, v, true);
                    ffi::lua_setupvalue(l, -2, n);
                    ffi::lua_pop(l, 1);
                }
                Act::Fenv { f, env } => {
                    push_slot(l, plan, f);
                    push(l, plan, env, true);
                    set_fenv(l);
                    ffi::lua_pop(l, 1);
                }
            }
        }
        for j in &plan.joins {
            push_slot(l, plan, j.new_fn);
            push_slot(l, plan, j.old_fn);
            ffi::join_upvalue(l, -2, j.n, -1, j.old_n);
            ffi::lua_pop(l, 2);
        }
    }
}

/// Pushes an operand. With `resolve`, a table of the new version that merged into a running
/// table is pushed as that running table, so no reference to the discarded copy survives.
///
/// # Safety
/// One free stack slot; the plan's anchors in place.
pub unsafe fn push(l: *mut lua_State, plan: &Plan, v: Pv, resolve: bool) {
    // SAFETY: one push per arm (the resolved case replaces the value it pushed).
    unsafe {
        match v {
            Pv::Nil => ffi::lua_pushnil(l),
            Pv::Bool(b) => ffi::lua_pushboolean(l, c_int::from(b)),
            Pv::Int(i) => push_int(l, i),
            Pv::Num(n) => ffi::lua_pushnumber(l, n),
            Pv::Slot(s) => {
                push_slot(l, plan, s);
                if resolve
                    && let Val::Table(p) = read(l, -1)
                    && let Some(live) = plan.merged_into(p)
                {
                    ffi::lua_pop(l, 1);
                    push_slot(l, plan, live);
                }
            }
        }
    }
}

unsafe fn push_slot(l: *mut lua_State, plan: &Plan, slot: u32) {
    // SAFETY: the anchor table is at `plan.anchors`.
    unsafe {
        ffi::lua_rawgeti(l, plan.anchors, ffi::lua_Integer::from(slot));
    }
}

#[cfg(feature = "luajit")]
unsafe fn set_fenv(l: *mut lua_State) {
    // SAFETY: a function at -2 and a table at -1.
    unsafe {
        ffi::lua_setfenv(l, -2);
    }
}

#[cfg(not(feature = "luajit"))]
unsafe fn set_fenv(l: *mut lua_State) {
    // Lua 5.2+ has no function environments (`_ENV` is an upvalue, merged as one); the
    // planner never emits this action there.
    // SAFETY: drops the pushed environment.
    unsafe { ffi::lua_pop(l, 1) }
}
