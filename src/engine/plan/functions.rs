//! Planning a pair of functions (rule 3: each new upvalue joins the old cell of the same
//! name), a new function with no running counterpart, and, on LuaJIT, the environments of
//! new functions.

use std::os::raw::c_int;

use mlua::ffi as lua;

use super::{Act, Cell, FnPair, Item, Join, Kind, NodeId, Planner, Was, kept_by_source};
#[cfg(feature = "luajit")]
use crate::vm::access::Val;
use crate::vm::access::{self, read};
use crate::vm::capi::lua_State;
impl Planner<'_> {
    pub(super) unsafe fn pair_fns(
        &mut self,
        l: *mut lua_State,
        live: u32,
        new: u32,
        base: Option<NodeId>,
        node: NodeId,
    ) {
        let old = self.old;
        // SAFETY: both functions are anchored Lua functions, at `fi` and `ni` while their
        // upvalues are read; `get` stops at the last one; each loop turn restores `top + 2`.
        unsafe {
            let top = lua::lua_gettop(l);
            self.push(l, live);
            self.push(l, new);
            let (fi, ni) = (top + 1, top + 2);
            let (old_ups, new_ups) = (access::Upvalues::of(l, fi), access::Upvalues::of(l, ni));
            self.mirror.begin(node, Kind::Func);
            let at = read(l, fi).object().unwrap_or(0);
            let source = old_ups.source();
            self.fn_pairs.push(FnPair { old: live, new, at, source });
            self.new_fns.push((new, read(l, ni).object().unwrap_or(0))); // (in new_fn_at since paired)
            self.counts.functions_replaced += 1;
            let mut i = 1;
            while let Some(name) = new_ups.get(l, i) {
                let value = top + 3;
                let id = new_ups.id(l, i);
                let prior = old.upvalue(base, name, i as usize);
                let mut joined = false;
                match self.cell(id) {
                    // a cell shared with a function paired before
                    Some(Cell::Joined(old_fn, old_n)) => {
                        self.joins.push(Join { new_fn: new, n: i, old_fn, old_n });
                    }
                    Some(_) => {}
                    None => {
                        if !name.is_empty()
                            && let Some(j) = old_ups.find(l, name, i)
                        {
                            let old_id = old_ups.id(l, j);
                            if self.cell(old_id).is_none() {
                                // Rule 3: the new cell joins the old one; its value is decided
                                // like any data slot (rule 5), a table merges (rule 4), a
                                // function is new.
                                self.claimed_cells.insert(old_id);
                                self.cells.insert(id, Cell::Joined(live, j));
                                self.joins.push(Join { new_fn: new, n: i, old_fn: live, old_n: j });
                                let nv = read(l, value);
                                if kept_by_source(prior, nv) {
                                    // the running value stays: not even read
                                    self.mirror.upvalue(node, name, Was::of(nv));
                                    self.counts.values_kept += 1;
                                } else {
                                    old_ups.push(l, j); // at top + 4
                                    let m = self.merge_slot(l, top + 4, value, prior);
                                    self.mirror.upvalue(node, name, m.was);
                                    self.count_value(&m);
                                    if m.takes_new() {
                                        let v = self.capture_val(l, value, m.new);
                                        self.acts.push(Act::Upvalue { f: live, n: j, v });
                                    }
                                }
                                joined = true;
                            }
                        }
                        if !joined {
                            self.unjoined.push((new, i, id));
                            self.adopt.push(Item::Cell { f: new, n: i });
                        }
                    }
                }
                if !joined {
                    let was = self.base_of(read(l, value));
                    self.mirror.upvalue(node, name, was);
                }
                access::settop_down(l, top + 2);
                i += 1;
            }
            access::settop_down(l, top);
        }
    }

    pub(super) unsafe fn adopt_fn(&mut self, l: *mut lua_State, new: u32, node: NodeId) {
        // SAFETY: the function is anchored and a Lua function (`reach` checked).
        unsafe {
            let top = lua::lua_gettop(l);
            self.push(l, new);
            let fi = top + 1;
            let at = read(l, fi).object().unwrap_or(0);
            if at != 0 && self.obj(at).pair != 0 {
                access::settop_down(l, top);
                return; // paired after all
            }
            let ups = access::Upvalues::of(l, fi);
            self.mirror.begin(node, Kind::Func);
            self.new_fns.push((new, at));
            self.mark_new_fn(l, fi);
            self.counts.functions_added += 1;
            let mut i = 1;
            while let Some(name) = ups.get(l, i) {
                let id = ups.id(l, i);
                let was = self.base_of(read(l, top + 2));
                self.mirror.upvalue(node, name, was);
                // (every pair is planned: a cell joined by now stays so)
                match self.cell(id) {
                    Some(Cell::Joined(old_fn, old_n)) => {
                        self.joins.push(Join { new_fn: new, n: i, old_fn, old_n });
                    }
                    Some(_) => {}
                    None => self.adopt_cell(l, new, i, id, top + 2),
                }
                access::settop_down(l, fi);
                i += 1;
            }
            access::settop_down(l, top);
        }
    }

    /// A new cell that joins no old one: its value stays, but a table in it that merged into
    /// a running table is replaced by that table.
    pub(super) unsafe fn adopt_cell(
        &mut self,
        l: *mut lua_State,
        f: u32,
        n: c_int,
        id: usize,
        value: c_int,
    ) {
        if self.cell(id).is_some() {
            return;
        }
        self.cells.insert(id, Cell::Adopted);
        // SAFETY: `value` is the cell's value on the stack.
        unsafe {
            if self.is_merged(read(l, value)) {
                let v = self.capture(l, value);
                self.acts.push(Act::Upvalue { f, n, v });
            }
            self.reach(l, value);
        }
    }

    /// LuaJIT: a new function whose environment is a new table that merged into a running
    /// one (a `module()`-style module, or `setfenv`) gets the running table as environment.
    #[cfg(feature = "luajit")]
    pub(super) unsafe fn plan_fenvs(&mut self, l: *mut lua_State) {
        // SAFETY: anchored functions, read in place as probed; lua_getfenv pushes one value.
        unsafe {
            let in_place = access::reads_slots_in_place(l);
            // functions of one version mostly share one environment: ask once per table
            let mut last: Option<(Val, bool)> = None;
            for i in 0..self.new_fns.len() {
                let Some(&(f, p)) = self.new_fns.get(i) else { break };
                let env = if in_place && p != 0 {
                    Val::Table(access::in_place::env_of(p))
                } else {
                    self.push(l, f);
                    lua::lua_getfenv(l, -1);
                    let env = read(l, -1);
                    lua::lua_pop(l, 2);
                    env
                };
                let merged = match last {
                    Some((e, m)) if e == env => m,
                    _ => self.is_merged(env),
                };
                last = Some((env, merged));
                if merged {
                    self.push(l, f);
                    lua::lua_getfenv(l, -1);
                    let env = self.capture(l, lua::lua_gettop(l));
                    self.acts.push(Act::Fenv { f, env });
                    lua::lua_pop(l, 2);
                }
            }
        }
    }
}
