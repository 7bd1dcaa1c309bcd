//! Deciding one slot (a field, a metatable, an upvalue cell) of the merge: data three ways
//! (rule 5), tables by pairing them (rule 1), functions three ways too (rule 2).

use std::os::raw::c_int;

use mlua::ffi as lua;

use super::{
    Decision, Dump, Item, Kind, Located, MERGED, Pair, Pairing, Planner, Prior, Scope, Was, decide,
};
use crate::vm::access::{self, Val, read};
use crate::vm::capi::{self, lua_State};
impl Planner<'_> {
    /// Decides one slot (a field, a metatable, an upvalue cell) whose running value is at
    /// `live` and new value at `new`, queueing the walks it implies.
    pub(super) unsafe fn merge_slot<'v>(
        &mut self,
        l: *mut lua_State,
        live: c_int,
        new: c_int,
        prior: Prior,
    ) -> Decided<'v> {
        // SAFETY: valid absolute indices from the caller.
        unsafe {
            let (running, incoming): (Val<'v>, Val<'v>) = (read(l, live), read(l, new));
            let equal = identical(running, incoming);
            let (decision, was) = self.decide_slot(l, (live, new), (running, incoming), prior);
            Decided { decision, was, new: incoming, equal }
        }
    }

    /// `merge_slot` on the values `running` and `incoming` read at `live` and `new`.
    pub(super) unsafe fn decide_slot<'v>(
        &mut self,
        l: *mut lua_State,
        (live, new): (c_int, c_int),
        (running, incoming): (Val<'v>, Val<'v>),
        prior: Prior,
    ) -> (Decision, Was<'v>) {
        // SAFETY: valid absolute indices from the caller.
        unsafe {
            match incoming {
                Val::Table(at) if running != incoming && !self.foreign(at) => {
                    let new = Located { idx: new, at };
                    self.decide_table(l, live, new, running, prior)
                }
                Val::LuaFn(at) if running != incoming => {
                    let new = Located { idx: new, at };
                    self.decide_lua_function(l, live, new, running, prior)
                }
                // the same object on both sides, or the new version holds a table that is
                // not its own (a shared or foreign one); and code, even native: the new
                // version's wins unless it is the very same
                Val::Table(_) | Val::LuaFn(_) | Val::CFn(_) => {
                    let d = if running == incoming { Decision::Keep } else { Decision::TakeNew };
                    (d, Was::Opaque)
                }
                _ => (decide(prior, running, incoming), Was::of(incoming)),
            }
        }
    }

    /// Rule 1: a new table of the module merges into the running table in the slot (the
    /// running one keeps its identity), once; a table met again keeps the slot if it holds
    /// the table it merged into.
    ///
    /// # Safety
    /// Valid indices.
    unsafe fn decide_table<'v>(
        &mut self,
        l: *mut lua_State,
        live: c_int,
        new: Located,
        running: Val<'v>,
        prior: Prior,
    ) -> (Decision, Was<'v>) {
        // SAFETY: valid indices from the caller; anchoring keeps objects alive.
        unsafe {
            let running_table = match running {
                Val::Table(at) if !self.foreign(at) => Some(Located { idx: live, at }),
                _ => None,
            };
            // (`local cache = {}`) a table with nothing to merge, delete or set is paired, but
            // not planned: the running one stays as it is
            let base = self.old.child(prior, Kind::Table);
            let bare = running_table.is_some()
                && self.old.is_bare(base)
                && access::is_bare_table(l, new.idx, new.at);
            let pairing = Pairing::Table { anchor_new: !bare };
            let (o, paired) = self.meet(l, running_table, new, pairing);
            let node = o.node;
            if o.flags & MERGED != 0 {
                // a table of the new version met again: kept if the running slot already
                // holds the table it merged into
                let keep = matches!(running, Val::Table(_)) && {
                    self.push(l, o.pair);
                    let same = lua::lua_rawequal(l, live, -1) != 0;
                    lua::lua_pop(l, 1);
                    same
                };
                let d = if keep { Decision::Keep } else { Decision::TakeNew };
                return (d, Was::Node(node));
            }
            if let (Some((running_slot, new_slot)), Some(old)) = (paired, running_table) {
                self.merged.push(new.at);
                if bare {
                    self.mirror.begin(node, Kind::Table);
                    return (Decision::Keep, Was::Node(node));
                }
                self.paired.push(Item::Tables {
                    at: Pair { old: old.at, new: new.at },
                    live: running_slot,
                    new: new_slot,
                    base,
                    node,
                    scope: Scope::Module,
                });
                return (Decision::Keep, Was::Node(node));
            }
            self.reach_val(l, new.idx, Val::Table(new.at));
            (Decision::TakeNew, Was::Node(node))
        }
    }

    /// Rule 2: a new function replaces the old function `decide_function` names (once),
    /// and takes the slot unless the program's own function stays there.
    ///
    /// # Safety
    /// Valid indices.
    unsafe fn decide_lua_function<'v>(
        &mut self,
        l: *mut lua_State,
        live: c_int,
        new: Located,
        running: Val<'v>,
        prior: Prior,
    ) -> (Decision, Was<'v>) {
        // SAFETY: valid indices from the caller; anchoring keeps objects alive; what
        // `decide_function` pushed is dropped once the old function is anchored.
        unsafe {
            let top = lua::lua_gettop(l);
            let (old_fn, d) = self.decide_function(l, live, new.idx, running, prior);
            let old = old_fn.and_then(|idx| Some(Located { idx, at: read(l, idx).object()? }));
            let (o, paired) = self.meet(l, old, new, Pairing::Function);
            let node = o.node;
            access::settop_down(l, top);
            if let (Some((old_slot, new_slot)), Some(old)) = (paired, old) {
                self.new_fn_at.insert(new.at);
                self.paired.push(Item::Fns {
                    at: Pair { old: old.at, new: new.at },
                    live: old_slot,
                    new: new_slot,
                    base: self.old.child(prior, Kind::Func),
                    node,
                });
                return (d, Was::Node(node));
            }
            self.reach_val(l, new.idx, Val::LuaFn(new.at));
            (d, Was::Node(node))
        }
    }

    /// Rule 2, three-way: which old function the new one at `new` replaces (its stack index;
    /// `None`: none, the new one is added) and whether the slot takes the new one.
    ///
    /// Only a function the module's previous version made is ever replaced, in this slot or
    /// anywhere else (the walk): the one the base has here, pushed from the base functions.
    /// If the running value (at `live`, read as `lv`) is still that one, it is replaced. If
    /// the program put its own value here (a mock, a patch), that value stays unless the
    /// source changed the function (compared without line information), and is never
    /// replaced elsewhere; the previous version's function is replaced wherever it is still
    /// held. Without a base (a module loaded before hotreload), a running function from the
    /// same chunk as the new one is taken for the module's.
    ///
    /// # Safety
    /// Valid indices; may push one value, which the caller drops.
    pub(super) unsafe fn decide_function(
        &mut self,
        l: *mut lua_State,
        live: c_int,
        new: c_int,
        lv: Val,
        prior: Prior,
    ) -> (Option<c_int>, Decision) {
        if let Some(changes) = self.changes.as_mut() {
            changes.code_changed = None; // unknown unless a base function says
        }
        // SAFETY: as documented; the base functions' table is at `base_fns`.
        unsafe {
            match self.push_base_fn(l, prior) {
                Some(b) if lua::lua_rawequal(l, b, live) != 0 => {
                    if let Some(changes) = self.changes.as_mut() {
                        changes.code_changed = Some(!same_code(l, b, new));
                    }
                    (Some(live), Decision::TakeNew)
                }
                Some(b) => {
                    let same = same_code(l, b, new);
                    if let Some(changes) = self.changes.as_mut() {
                        changes.code_changed = Some(!same);
                    }
                    if same {
                        self.counts.functions_kept += 1;
                        (Some(b), Decision::Keep)
                    } else {
                        (Some(b), Decision::TakeNew)
                    }
                }
                None if matches!(prior, Prior::Unknown)
                    && matches!(lv, Val::LuaFn(_))
                    && capi::same_chunk(l, live, new) =>
                {
                    (Some(live), Decision::TakeNew)
                }
                None => (None, Decision::TakeNew),
            }
        }
    }

    /// Pushes the function the previous version had at a slot whose base is `prior`, if the
    /// base knows it; returns its index.
    ///
    /// # Safety
    /// One free stack slot.
    pub(super) unsafe fn push_base_fn(&mut self, l: *mut lua_State, prior: Prior) -> Option<c_int> {
        let node = self.old.child(prior, Kind::Func)?;
        if self.base_fns == 0 {
            return None;
        }
        // SAFETY: raw reads of the anchored base functions' table, removed after.
        unsafe {
            self.tab.get(l, self.base_fns);
            capi::rawgeti(l, -1, node.checked_add(1)?);
            lua::lua_remove(l, -2);
            if lua::lua_type(l, -1) == lua::LUA_TFUNCTION {
                Some(lua::lua_gettop(l))
            } else {
                lua::lua_pop(l, 1);
                None
            }
        }
    }
}

/// A slot `merge_slot` decided: the decision, the base to record for the new value, the
/// two values it read, and whether they are raw-equal.
pub(super) struct Decided<'v> {
    pub(super) decision: Decision,
    pub(super) was: Was<'v>,
    pub(super) new: Val<'v>,
    pub(super) equal: bool,
}

impl Decided<'_> {
    /// Whether the slot is to be written: the new value wins and is not the running one.
    pub(super) fn takes_new(&self) -> bool {
        self.decision != Decision::Keep && !self.equal
    }
}

/// Whether two values read from the stack are the same value to every observer, so writing
/// one over the other changes nothing: raw-equal (strings by content, objects by identity)
/// and, for numbers, of the same subtype with the same bits. `1` and `1.0`, and `0.0` and
/// `-0.0`, are raw-equal but not identical: rewriting one as the other is an edit (rule 5).
fn identical(a: Val, b: Val) -> bool {
    match (a, b) {
        (Val::Num(x), Val::Num(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// Whether the functions at `a` and `b` have the same code, compared without line
/// information (moved lines alone are not an edit; see `proto::Dump::code_digest`).
/// Unknown (a C function, a dump that does not parse) counts as different.
///
/// # Safety
/// Valid indices; one free stack slot.
unsafe fn same_code(l: *mut lua_State, a: c_int, b: c_int) -> bool {
    // SAFETY: forwarded.
    let digest = |idx| unsafe {
        let dump = Dump::parse(&capi::dump(l, idx)?).ok()?;
        dump.code_digest(dump.root)
    };
    matches!((digest(a), digest(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::Lua;

    /// `identical` on values read from the stack agrees with `lua_rawequal` on the values
    /// themselves, except where numbers differ in subtype or bits (`1` and `1.0`, `0.0` and
    /// `-0.0`), for every pair of a set that has the corner cases.
    #[test]
    fn identical_is_raw_equal_with_the_same_number_subtype_and_bits() {
        let lua = Lua::new();
        let values = r#"
            local long = ("x"):rep(100)
            local t, f = {}, function() end
            local maxi, mini = math.maxinteger or 2^53 - 1, math.mininteger or -2^53 + 1
            return { 1, 1.0, -1, 0, 0.0, -0.0, 0.5, 2^53, 2^53 + 1.0, maxi,
                     maxi + 0.0, mini, mini + 0.0, 2^63, -2^63,
                     1/0, -1/0, "1", "a", "a", long, long .. "", ("x"):rep(99) .. "y",
                     true, false, t, t, {}, f, f, print, string.len }
        "#;
        let list: mlua::Table = lua.load(values).eval().unwrap();
        // SAFETY: the list is pushed once; each pair of its values is pushed and popped.
        unsafe {
            capi::testing::assert_raw(&lua, list, |l, failures| {
                let n = lua::lua_rawlen(l, 1) as lua::lua_Integer;
                for i in 1..=n {
                    for j in 1..=n {
                        lua::lua_rawgeti(l, 1, i);
                        lua::lua_rawgeti(l, 1, j);
                        let numbers = lua::lua_type(l, -2) == lua::LUA_TNUMBER
                            && lua::lua_type(l, -1) == lua::LUA_TNUMBER;
                        let same_kind = !numbers || {
                            let int = |idx| read(l, idx) == Val::Int(lua::lua_tointeger(l, idx));
                            let bits = |idx| lua::lua_tonumber(l, idx).to_bits();
                            int(-2) == int(-1) && (int(-2) || bits(-2) == bits(-1))
                        };
                        let expected = lua::lua_rawequal(l, -2, -1) != 0 && same_kind;
                        if identical(read(l, -2), read(l, -1)) != expected {
                            failures.push_str(&format!("items {i} and {j}: expected {expected}\n"));
                        }
                        lua::lua_pop(l, 2);
                    }
                }
            });
        }
    }
}
