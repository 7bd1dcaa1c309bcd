//! Applying a planned merge: the only place that writes to the running program. It runs no
//! user code and raises nothing but memory errors, so a plan that exists is applied whole.
//! Where a `__reload` hook may run, every write is logged with the value it overwrote, so
//! that the merge can be rolled back if the hook fails.

use std::os::raw::c_int;

use mlua::ffi as lua;

use super::plan::{Act, Operand, Plan, push_int};
use crate::vm::access::{Val, read};
use crate::vm::capi::{self, lua_State};

/// One write: what it overwrote, and what it wrote (undone only if still there, so that
/// undoing one module of a batch never clobbers what another one wrote after it).
#[derive(Debug)]
pub enum Undo {
    Set { t: u32, k: Operand, old: Operand, new: Operand },
    Meta { t: u32, old: Operand, new: Operand },
    Up { f: u32, n: c_int, old: Operand, new: Operand },
    Fenv { f: u32, old: Operand, new: Operand },
}

/// Performs every write of `plan` and joins the upvalue cells; returns the undo log, empty
/// unless `logged` (reading what each write overwrites, and keeping it, is most of the cost
/// of a write).
///
/// # Safety
/// Inside `protect`, with the plan's anchor table placed (`Plan::place`); the collector is
/// paused (no finalizer may run between two writes).
pub unsafe fn apply(l: *mut lua_State, plan: &mut Plan, logged: bool) -> Vec<Undo> {
    let acts = std::mem::take(&mut plan.acts);
    let mut log = Vec::with_capacity(if logged { acts.len() } else { 0 });
    // What the value on top is about to lose (popped), anchored if the log keeps it.
    let overwritten = |l: *mut lua_State, plan: &mut Plan| {
        // SAFETY: a value on top, anchored if kept, then popped.
        unsafe {
            let old = if logged { plan.capture(l, -1) } else { Operand::Nil };
            lua::lua_pop(l, 1);
            old
        }
    };
    // SAFETY: every operand is an anchored object or inline data; each arm is stack-neutral.
    unsafe {
        capi::check_stack(l, 8);
        let top = lua::lua_gettop(l);
        for act in &acts {
            let undo = match *act {
                Act::Set { t, k, .. } | Act::Unset { t, k } => {
                    // Set writes a value under the key as resolved; Unset removes a key as is
                    let (resolve_key, value) = match *act {
                        Act::Set { v, .. } => (true, v),
                        _ => (false, Operand::Nil),
                    };
                    push_slot(l, plan, t);
                    let k = push(l, plan, k, resolve_key);
                    let old = if logged {
                        lua::lua_pushvalue(l, -1);
                        lua::lua_rawget(l, top + 1);
                        overwritten(l, plan)
                    } else {
                        Operand::Nil
                    };
                    push(l, plan, value, true);
                    lua::lua_rawset(l, top + 1);
                    Undo::Set { t, k, old, new: value }
                }
                Act::Meta { t, mt } => {
                    push_slot(l, plan, t);
                    if lua::lua_getmetatable(l, -1) == 0 {
                        lua::lua_pushnil(l);
                    }
                    let old = overwritten(l, plan);
                    push(l, plan, mt, true);
                    lua::lua_setmetatable(l, -2);
                    Undo::Meta { t, old, new: mt }
                }
                Act::Upvalue { f, n, v } => {
                    push_slot(l, plan, f);
                    lua::lua_getupvalue(l, -1, n);
                    let old = overwritten(l, plan);
                    push(l, plan, v, true);
                    lua::lua_setupvalue(l, -2, n);
                    Undo::Up { f, n, old, new: v }
                }
                Act::Fenv { f, env } => {
                    push_slot(l, plan, f);
                    get_fenv(l);
                    let old = overwritten(l, plan);
                    push(l, plan, env, true);
                    set_fenv(l);
                    Undo::Fenv { f, old, new: env }
                }
            };
            if logged {
                log.push(undo);
            }
            lua::lua_settop(l, top);
        }
        // a function's joins are consecutive: its two functions stay pushed across them
        let mut pushed = None;
        for j in &plan.joins {
            if pushed != Some((j.new_fn, j.old_fn)) {
                lua::lua_settop(l, top);
                push_slot(l, plan, j.new_fn);
                push_slot(l, plan, j.old_fn);
                pushed = Some((j.new_fn, j.old_fn));
            }
            capi::join_upvalue(l, top + 1, j.n, top + 2, j.old_n);
        }
        lua::lua_settop(l, top);
    }
    log
}

/// Puts back what `log` overwrote, last write first. The new version's functions stay joined
/// to the old cells, but nothing refers to them any more.
///
/// # Safety
/// As `apply`, with the same plan.
pub unsafe fn undo(l: *mut lua_State, plan: &Plan, log: &[Undo]) {
    // SAFETY: every operand is anchored; each arm is stack-neutral (settop below).
    unsafe {
        let top = lua::lua_gettop(l);
        for u in log.iter().rev() {
            match *u {
                Undo::Set { t, k, old, new } => {
                    push_slot(l, plan, t); // top + 1
                    push(l, plan, k, false);
                    lua::lua_rawget(l, top + 1);
                    if still(l, plan, new) {
                        push(l, plan, k, false);
                        push(l, plan, old, false);
                        lua::lua_rawset(l, top + 1);
                    }
                }
                Undo::Meta { t, old, new } => {
                    push_slot(l, plan, t);
                    if lua::lua_getmetatable(l, top + 1) == 0 {
                        lua::lua_pushnil(l);
                    }
                    if still(l, plan, new) {
                        push(l, plan, old, false);
                        lua::lua_setmetatable(l, top + 1);
                    }
                }
                Undo::Up { f, n, old, new } => {
                    push_slot(l, plan, f);
                    lua::lua_getupvalue(l, top + 1, n);
                    if still(l, plan, new) {
                        push(l, plan, old, false);
                        lua::lua_setupvalue(l, top + 1, n);
                    }
                }
                Undo::Fenv { f, old, new } => {
                    push_slot(l, plan, f);
                    get_fenv(l);
                    if still(l, plan, new) {
                        lua::lua_settop(l, top + 1);
                        push(l, plan, old, false);
                        set_fenv(l);
                    }
                }
            }
            lua::lua_settop(l, top);
        }
    }
}

/// Whether the value on top is the one `new` wrote (resolved as `apply` wrote it). Leaves the
/// stack as it was.
unsafe fn still(l: *mut lua_State, plan: &Plan, new: Operand) -> bool {
    // SAFETY: one push, compared, popped.
    unsafe {
        push(l, plan, new, true);
        let same = lua::lua_rawequal(l, -1, -2) != 0;
        lua::lua_pop(l, 1);
        same
    }
}

/// Pushes an operand, and returns it as pushed. With `resolve`, a table of the new version
/// that merged into a running table is pushed as that running table, so no reference to the
/// discarded copy survives.
///
/// # Safety
/// One free stack slot; the plan's anchors in place.
pub unsafe fn push(l: *mut lua_State, plan: &Plan, v: Operand, resolve: bool) -> Operand {
    // SAFETY: one push per arm (the resolved case replaces the value it pushed).
    unsafe {
        match v {
            Operand::Nil => lua::lua_pushnil(l),
            Operand::Bool(b) => lua::lua_pushboolean(l, c_int::from(b)),
            Operand::Int(i) => push_int(l, i),
            Operand::Num(n) => lua::lua_pushnumber(l, n),
            Operand::Slot(s) => {
                push_slot(l, plan, s);
                if resolve
                    && let Val::Table(p) = read(l, -1)
                    && let Some(live) = plan.merged_into(p)
                {
                    lua::lua_pop(l, 1);
                    push_slot(l, plan, live);
                    return Operand::Slot(live);
                }
            }
        }
    }
    v
}

unsafe fn push_slot(l: *mut lua_State, plan: &Plan, slot: u32) {
    // SAFETY: the anchor table is placed or held.
    unsafe { plan.push(l, slot) }
}

/// LuaJIT: a function's environment (the value below it on the stack is the function).
#[cfg(feature = "luajit")]
unsafe fn get_fenv(l: *mut lua_State) {
    // SAFETY: a function on top.
    unsafe { lua::lua_getfenv(l, -1) }
}

#[cfg(feature = "luajit")]
unsafe fn set_fenv(l: *mut lua_State) {
    // SAFETY: a function at -2 and a table at -1.
    unsafe {
        lua::lua_setfenv(l, -2);
    }
}

// Lua 5.2+ has no function environments (`_ENV` is an upvalue, merged as one); the planner
// never emits these actions there.
#[cfg(not(feature = "luajit"))]
unsafe fn get_fenv(l: *mut lua_State) {
    // SAFETY: one push.
    unsafe { lua::lua_pushnil(l) }
}

#[cfg(not(feature = "luajit"))]
unsafe fn set_fenv(l: *mut lua_State) {
    // SAFETY: drops the pushed environment.
    unsafe { lua::lua_pop(l, 1) }
}
