//! Planning a pair of tables (the running one and the new one): their entries, the keys the
//! source deleted, their metatables; a new table with no running counterpart; entries whose
//! key is an object.

use std::os::raw::c_int;

use mlua::ffi as lua;

use super::slot::Decided;
use super::{
    Act, Decision, Deferred, KeyRef, Kind, NodeId, Operand, Planner, Prior, Scope, Was,
    kept_by_source,
};
use crate::vm::access::{self, Val, read};
use crate::vm::capi::{self, lua_State};
impl Planner<'_> {
    pub(super) unsafe fn pair_tables(
        &mut self,
        l: *mut lua_State,
        live: u32,
        new: u32,
        base: Option<NodeId>,
        node: NodeId,
        scope: Scope,
    ) {
        let old = self.old;
        // SAFETY: both tables are anchored; the traversal only reads `new` and `live`, so
        // `lua_next` stays valid; every branch restores the stack to `top + 3` (the key).
        unsafe {
            let top = lua::lua_gettop(l);
            self.push(l, live);
            self.push(l, new);
            let (ti, ni) = (top + 1, top + 2);
            self.mirror.begin(node, Kind::Table);
            let mut seen_in_base = 0usize;
            let mut cur = old.cursor(base);
            let mut entries = access::Entries::new(l, ni);
            while entries.next(l) {
                let (k, v) = (top + 3, top + 4);
                let kv = read(l, k);
                match KeyRef::of(kv) {
                    Some(key) => {
                        let prior = old.field(base, key, &mut cur);
                        if matches!(prior, Prior::Was(_)) {
                            seen_in_base += 1;
                        }
                        let nv = read(l, v);
                        if kept_by_source(prior, nv) {
                            // the running value stays, whatever it is: not even looked up
                            self.mirror.field(node, key, Was::of(nv));
                            self.counts.values_kept += 1;
                        } else {
                            let m = self.merge_entry(l, (live, ti), k, v, prior);
                            self.mirror.field(node, key, m.was);
                            if let Some(changes) = self.changes.as_mut() {
                                changes.field(node, key, &m, prior);
                            }
                        }
                    }
                    None if kv.object().is_some() => {
                        let (k, v) = (self.anchor(l, k), self.anchor(l, v));
                        self.deferred.push(Deferred { t: live, k, v });
                    }
                    None => {
                        // userdata or coroutine keys: the same object in both versions
                        self.merge_entry(l, (live, ti), k, v, Prior::Unknown);
                    }
                }
                access::settop_down(l, top + 3);
            }
            if scope == Scope::Module {
                if seen_in_base < old.len(base) {
                    self.plan_deletions(l, live, ti, ni, base);
                }
                self.pair_metatables(l, live, ti, ni, base, node);
            }
            access::settop_down(l, top);
        }
    }

    /// Decides the entry of a new table at `k` and `v` (the top two stack slots) against the
    /// running table `live`, at `ti`: its running value is pushed above them, and the write
    /// the decision implies is recorded.
    pub(super) unsafe fn merge_entry<'v>(
        &mut self,
        l: *mut lua_State,
        (live, ti): (u32, c_int),
        k: c_int,
        v: c_int,
        prior: Prior,
    ) -> Decided<'v> {
        // SAFETY: valid indices from the caller, `v` on top; one free slot.
        unsafe {
            lua::lua_pushvalue(l, k);
            capi::rawget(l, ti);
            let m = self.merge_slot(l, v + 1, v, prior);
            self.record_set(l, live, k, v, &m);
            m
        }
    }

    /// Records `t[k] = new` (`new` the stack index of `m.new`) if the decision takes the new
    /// value and it differs.
    pub(super) unsafe fn record_set(
        &mut self,
        l: *mut lua_State,
        t: u32,
        k: c_int,
        new: c_int,
        m: &Decided,
    ) {
        self.count_value(m);
        if m.takes_new() {
            // SAFETY: valid indices from the caller.
            let (k, v) = unsafe { (self.capture(l, k), self.capture_val(l, new, m.new)) };
            self.acts.push(Act::Set { t, k, v });
        }
    }

    /// Counts a slot of data in the new source (not a function or a table, counted as such)
    /// for the report: kept as it runs, or taken from the source.
    pub(super) fn count_value(&mut self, m: &Decided) {
        let data = !matches!(m.new, Val::Table(_) | Val::LuaFn(_) | Val::CFn(_));
        if m.decision == Decision::Keep {
            if data {
                self.counts.values_kept += 1;
            }
        } else if data && !m.equal {
            self.counts.values_taken += 1;
        }
    }

    /// Rule 5: a key the base had and the new source no longer has is removed.
    pub(super) unsafe fn plan_deletions(
        &mut self,
        l: *mut lua_State,
        live: u32,
        ti: c_int,
        ni: c_int,
        base: Option<NodeId>,
    ) {
        let old = self.old;
        // SAFETY: `ti`/`ni` are the anchored tables; each key is pushed and popped here.
        unsafe {
            let top = lua::lua_gettop(l);
            for key in old.keys(base) {
                push_key(l, key);
                lua::lua_pushvalue(l, -1);
                let in_new = lua::lua_rawget(l, ni) != lua::LUA_TNIL;
                lua::lua_pop(l, 1);
                if !in_new {
                    lua::lua_pushvalue(l, -1);
                    if lua::lua_rawget(l, ti) != lua::LUA_TNIL {
                        let k = self.capture(l, top + 1);
                        self.acts.push(Act::Set { t: live, k, v: Operand::Nil });
                        self.counts.keys_removed += 1;
                        if let Some(changes) = self.changes.as_mut() {
                            changes.removed(base, key);
                        }
                    }
                }
                access::settop_down(l, top);
            }
        }
    }

    /// Rule 6: metatables merge like tables (read raw: `__metatable` does not hide them).
    pub(super) unsafe fn pair_metatables(
        &mut self,
        l: *mut lua_State,
        live: u32,
        ti: c_int,
        ni: c_int,
        base: Option<NodeId>,
        node: NodeId,
    ) {
        let old = self.old;
        // SAFETY: two pushes at most (new metatable, running one), popped by the final settop.
        unsafe {
            let top = lua::lua_gettop(l);
            let has_new = lua::lua_getmetatable(l, ni) != 0;
            let prior = old.meta(base);
            if !has_new && !matches!(prior, Prior::Was(_)) {
                // nothing to set either way: the running metatable is not even looked up
                access::settop_down(l, top);
                return;
            }
            if !has_new {
                lua::lua_pushnil(l);
            }
            if lua::lua_getmetatable(l, ti) == 0 {
                lua::lua_pushnil(l);
            }
            let (live_mt, new_mt) = (top + 2, top + 1);
            if has_new {
                let m = self.merge_slot(l, live_mt, new_mt, prior);
                self.mirror.meta(node, m.was);
                if m.takes_new() {
                    let mt = self.capture_val(l, new_mt, m.new);
                    self.acts.push(Act::Meta { t: live, mt });
                }
            } else if lua::lua_type(l, live_mt) != lua::LUA_TNIL {
                // The source dropped its setmetatable.
                self.acts.push(Act::Meta { t: live, mt: Operand::Nil });
            }
            access::settop_down(l, top);
        }
    }

    pub(super) unsafe fn adopt_table(&mut self, l: *mut lua_State, new: u32, node: NodeId) {
        // SAFETY: the table is anchored; the traversal only writes through planned actions.
        unsafe {
            let top = lua::lua_gettop(l);
            self.push(l, new);
            let ni = top + 1;
            if self.is_merged(read(l, ni)) {
                access::settop_down(l, top);
                return; // paired after all
            }
            self.mirror.begin(node, Kind::Table);
            lua::lua_pushnil(l);
            while lua::lua_next(l, ni) != 0 {
                let (k, v) = (top + 2, top + 3);
                let (kv, vv) = (read(l, k), read(l, v));
                if let Some(key) = KeyRef::of(kv) {
                    let was = self.base_of(vv);
                    self.mirror.field(node, key, was);
                }
                self.reach(l, k);
                self.reach(l, v);
                // References to a new table that merged into a running one are redirected.
                let (remap_key, remap_value) = (self.is_merged(kv), self.is_merged(vv));
                if remap_key || remap_value {
                    let (kp, vp) = (self.capture(l, k), self.capture(l, v));
                    if remap_key {
                        self.acts.push(Act::Unset { t: new, k: kp });
                    }
                    self.acts.push(Act::Set { t: new, k: kp, v: vp });
                }
                access::settop_down(l, top + 2);
            }
            if lua::lua_getmetatable(l, ni) != 0 {
                let mv = read(l, top + 2);
                let was = self.base_of(mv);
                self.mirror.meta(node, was);
                self.reach(l, top + 2);
                if self.is_merged(mv) {
                    let mt = self.capture(l, top + 2);
                    self.acts.push(Act::Meta { t: new, mt });
                }
            }
            access::settop_down(l, top);
        }
    }

    /// An entry of a paired table keyed by a table or a function (see [`Deferred`]).
    pub(super) unsafe fn deferred_entry(&mut self, l: *mut lua_State, d: Deferred) {
        // SAFETY: all three are anchored; pushes are undone by the final settop.
        unsafe {
            let top = lua::lua_gettop(l);
            self.push(l, d.t);
            self.push(l, d.k);
            self.push(l, d.v);
            let (ti, ki, vi, live) = (top + 1, top + 2, top + 3, top + 4);
            let kv = read(l, ki);
            let live_key = match kv {
                Val::Table(p) | Val::LuaFn(p) => {
                    self.objs.get(&p).map(|o| o.pair).filter(|&s| s != 0)
                }
                _ => None,
            };
            match live_key {
                Some(lk) => {
                    self.push(l, lk);
                    capi::rawget(l, ti);
                }
                None => lua::lua_pushnil(l),
            }
            let dec = self.merge_slot(l, live, vi, Prior::Unknown).decision;
            let renamed = matches!(kv, Val::LuaFn(_)) && lua::lua_type(l, live) != lua::LUA_TNIL;
            if let (true, Some(lk)) = (renamed, live_key) {
                // old_function -> v becomes new_function -> v
                self.acts.push(Act::Unset { t: d.t, k: Operand::Slot(lk) });
                let value = if dec == Decision::Keep { live } else { vi };
                let v = self.capture(l, value);
                self.acts.push(Act::Set { t: d.t, k: Operand::Slot(d.k), v });
            } else if dec == Decision::TakeNew && lua::lua_rawequal(l, live, vi) == 0 {
                self.reach(l, ki);
                let k = match (kv, live_key) {
                    (Val::Table(_), Some(lk)) => Operand::Slot(lk),
                    _ => Operand::Slot(d.k),
                };
                let v = self.capture(l, vi);
                self.acts.push(Act::Set { t: d.t, k, v });
            }
            access::settop_down(l, top);
        }
    }
}

/// Pushes a key of the base mirror as a Lua value.
unsafe fn push_key(l: *mut lua_State, key: KeyRef) {
    use crate::engine::base::Key;
    // SAFETY: one push each.
    unsafe {
        match key {
            KeyRef::Str(s) => capi::push_bytes(l, s),
            KeyRef::Other(Key::Bool(b)) => lua::lua_pushboolean(l, c_int::from(b)),
            KeyRef::Other(Key::Int(i)) => super::push_int(l, i),
            KeyRef::Other(Key::Num(bits)) => lua::lua_pushnumber(l, f64::from_bits(bits)),
            KeyRef::Other(Key::Light(p)) => lua::lua_pushlightuserdata(l, p as *mut _),
        }
    }
}
