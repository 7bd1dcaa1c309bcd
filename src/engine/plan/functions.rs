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

/// The two functions `pair_fns` pairs, on the stack, and their upvalues.
struct FnPairing {
    /// anchor slots
    old: u32,
    new: u32,
    old_ups: access::Upvalues,
    new_ups: access::Upvalues,
    base: Option<NodeId>,
    node: NodeId,
}

impl Planner<'_> {
    /// Pairs the running function in anchor slot `old` with the new one in `new`: the walk
    /// will replace the old one, and each upvalue of the new one joins the old cell of the
    /// same name (rule 3), its value decided like any data slot.
    pub(super) unsafe fn pair_fns(
        &mut self,
        l: *mut lua_State,
        old: u32,
        new: u32,
        base: Option<NodeId>,
        node: NodeId,
    ) {
        // SAFETY: both functions are anchored Lua functions, at `top + 1` and `top + 2` while
        // their upvalues are read; `get` stops at the last one; each turn restores `top + 2`.
        unsafe {
            let top = lua::lua_gettop(l);
            self.push(l, old);
            self.push(l, new);
            let (old_ups, new_ups) =
                (access::Upvalues::of(l, top + 1), access::Upvalues::of(l, top + 2));
            self.mirror.begin(node, Kind::Func);
            let at = read(l, top + 1).object().unwrap_or(0);
            self.fn_pairs.push(FnPair { old, new, at, source: old_ups.source() });
            // (in new_fn_at since paired)
            self.new_fns.push((new, read(l, top + 2).object().unwrap_or(0)));
            self.counts.functions_replaced += 1;
            let pairing = FnPairing { old, new, old_ups, new_ups, base, node };
            let mut i = 1;
            while let Some(name) = pairing.new_ups.get(l, i) {
                self.pair_upvalue(l, &pairing, i, name, top + 3);
                access::settop_down(l, top + 2);
                i += 1;
            }
            access::settop_down(l, top);
        }
    }

    /// Upvalue `i` (called `name`, its value at `value`) of the new function of `p`: shares
    /// a cell joined before, or joins the old cell of its name, or waits (a function paired
    /// later may still join it) and is adopted.
    ///
    /// # Safety
    /// As in `pair_fns`; may push one value above `value`.
    unsafe fn pair_upvalue(
        &mut self,
        l: *mut lua_State,
        p: &FnPairing,
        i: c_int,
        name: &[u8],
        value: c_int,
    ) {
        // SAFETY: as documented.
        unsafe {
            let id = p.new_ups.id(l, i);
            let joined = match self.cell(id) {
                // a cell shared with a function paired before
                Some(Cell::Joined(old_fn, old_n)) => {
                    self.joins.push(Join { new_fn: p.new, n: i, old_fn, old_n });
                    false
                }
                Some(_) => false,
                None => {
                    let joined = self.join_upvalue(l, p, i, name, value, id);
                    if !joined {
                        self.unjoined.push((p.new, i, id));
                        self.adopt.push(Item::Cell { f: p.new, n: i });
                    }
                    joined
                }
            };
            if !joined {
                let was = self.base_of(read(l, value));
                self.mirror.upvalue(p.node, name, was);
            }
        }
    }

    /// Rule 3: the new cell `id` joins the old cell called `name`, if the old function has
    /// one no other new cell joined; its value is decided like any data slot (rule 5), a
    /// table merges (rule 4), a function is new. Whether it joined.
    ///
    /// # Safety
    /// As `pair_upvalue`.
    unsafe fn join_upvalue(
        &mut self,
        l: *mut lua_State,
        p: &FnPairing,
        i: c_int,
        name: &[u8],
        value: c_int,
        id: usize,
    ) -> bool {
        // SAFETY: as documented; the old value is pushed at `value + 1`.
        unsafe {
            if name.is_empty() {
                return false;
            }
            let Some(j) = p.old_ups.find(l, name, i) else { return false };
            let old_id = p.old_ups.id(l, j);
            if self.cell(old_id).is_some() {
                return false;
            }
            self.claimed_cells.insert(old_id);
            self.cells.insert(id, Cell::Joined(p.old, j));
            self.joins.push(Join { new_fn: p.new, n: i, old_fn: p.old, old_n: j });
            let prior = self.old.upvalue(p.base, name, i as usize);
            let incoming = read(l, value);
            if kept_by_source(prior, incoming) {
                // the running value stays: not even read
                self.mirror.upvalue(p.node, name, Was::of(incoming));
                self.counts.values_kept += 1;
            } else {
                p.old_ups.push(l, j);
                let m = self.merge_slot(l, value + 1, value, prior);
                self.mirror.upvalue(p.node, name, m.was);
                self.count_value(&m);
                if let Some(changes) = self.changes.as_mut() {
                    changes.local(name, &m);
                }
                if m.takes_new() {
                    let v = self.capture_val(l, value, m.new);
                    self.acts.push(Act::Upvalue { f: p.old, n: j, v });
                }
            }
            true
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
