//! Planning a merge: walk the new version and the running one in lockstep, pair their tables,
//! functions and upvalue cells, decide every slot, and record what to change. Nothing in the
//! running program is written here (rule 10, all or nothing): `apply` does that, and only
//! once the whole plan exists.
//!
//! Objects the plan refers to are kept in an anchor table on the Lua stack, so the collector
//! cannot free them between planning and applying; the identity maps are keyed by addresses
//! of objects that are anchored or reachable from the two versions, which the plan does not
//! change.

use std::os::raw::c_int;

use mlua::ffi as lua;

mod anchors;

use anchors::Anchors;

use super::base::{
    Builder, Decision, KeyRef, Kind, NodeId, Prior, Snapshot, Was, decide, kept_by_source,
};
use super::proto::Dump;
use super::ptrmap::{AddrSet, PtrMap, PtrSet};
use crate::vm::access::{self, Val, read};
use crate::vm::capi::{self, lua_State};
use crate::vm::gc::GcPause;

/// A value an action writes: inline data, or a slot of the anchor table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pv {
    Nil,
    Bool(bool),
    Int(i64),
    Num(f64),
    Slot(u32),
}

/// One write of the plan. Values of the new version that are tables merged into a running
/// table are written as that running table (see `apply`).
#[derive(Debug)]
pub enum Act {
    Set {
        t: u32,
        k: Pv,
        v: Pv,
    },
    /// `t[k] = nil` with `k` taken as is: an old key being renamed or redirected.
    Unset {
        t: u32,
        k: Pv,
    },
    Meta {
        t: u32,
        mt: Pv,
    },
    Up {
        f: u32,
        n: c_int,
        v: Pv,
    },
    #[cfg_attr(not(feature = "luajit"), allow(dead_code))]
    Fenv {
        f: u32,
        env: Pv,
    },
}

/// Upvalue `n` of new function `new_fn` is made to share cell `old_n` of `old_fn` (rule 3).
#[derive(Debug)]
pub struct Join {
    pub new_fn: u32,
    pub n: c_int,
    pub old_fn: u32,
    pub old_n: c_int,
}

/// A running function and the new one that replaces it (anchor slots), with what the walk
/// needs of the old one: its address, and where its chunk name is when read in place (see
/// `access::Upvalues::source`).
#[derive(Clone, Copy, Debug)]
pub struct FnPair {
    pub old: u32,
    pub new: u32,
    pub at: usize,
    pub source: Option<access::ChunkName>,
}

/// What a reload did, for the report and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub functions_replaced: u32,
    pub functions_added: u32,
    /// Functions the program put in place of the module's (a mock, a patch) and kept, because
    /// the source did not change the module's function there.
    pub functions_kept: u32,
    pub keys_removed: u32,
    pub upvalues_joined: u32,
    pub values_taken: u32,
    pub values_kept: u32,
}

/// What the planner knows about one table or function, of either version.
#[derive(Clone, Copy, Debug)]
struct Obj {
    /// Anchor slot, 0 if not anchored.
    slot: u32,
    /// Mirror node of a new object, `NO_NODE` if none yet.
    node: NodeId,
    /// For a new object: slot of the running object it pairs with, 0 if none.
    pair: u32,
    flags: u8,
}

const NO_NODE: NodeId = NodeId::MAX;
/// A new object queued for a walk (paired or adopted).
const QUEUED: u8 = 1;
/// A new table merged into `pair`: references to it are redirected there.
const MERGED: u8 = 4;

impl Default for Obj {
    fn default() -> Obj {
        Obj { slot: 0, node: NO_NODE, pair: 0, flags: 0 }
    }
}

/// What the planner knows about one upvalue cell.
#[derive(Clone, Copy, Debug)]
enum Cell {
    /// A new cell that joins upvalue `.1` of old function `.0`.
    Joined(u32, c_int),
    /// An old cell some new cell joins (kept in `Planner::claimed_cells`, not in the map).
    Claimed,
    /// A new cell that stays new.
    Adopted,
}

/// A planned merge, ready for `apply`.
pub struct Plan {
    tab: Anchors,
    n_anchors: u32,
    pub acts: Vec<Act>,
    pub joins: Vec<Join>,
    objs: PtrMap<Obj>,
    /// the address of every new table merged into a running one
    merged: Vec<usize>,
    /// the new version's functions (as the plan walked them), for the walk's lookups
    new_fn_at: AddrSet,
    cells: PtrMap<Cell>,
    /// Paired functions, for replacing references elsewhere.
    pub fpairs: Vec<FnPair>,
    /// What `package.loaded[name]` holds afterwards.
    pub root: Pv,
    pub counts: Counts,
    pub mirror: Snapshot,
    /// Anchor slot of the new version's functions by mirror node (`base::set_functions`).
    pub functions: u32,
}

impl Plan {
    /// The anchor slot of the running table that the new table at address `p` merged into.
    pub fn merged_into(&self, p: usize) -> Option<u32> {
        self.objs.get(&p).filter(|o| o.flags & MERGED != 0).map(|o| o.pair)
    }

    /// The address of every new table merged into a running one: the new copies that are
    /// garbage once applied.
    pub fn merged(&self) -> &[usize] {
        &self.merged
    }

    /// Whether the function at `p` belongs to the new version (as the plan walked it).
    pub fn is_new_fn(&self, p: usize) -> bool {
        self.new_fn_at.contains(p)
    }

    /// For a new upvalue cell: the old function and upvalue index whose cell it joins.
    pub fn joined_cell(&self, id: usize) -> Option<(u32, c_int)> {
        match self.cells.get(&id) {
            Some(&Cell::Joined(f, n)) => Some((f, n)),
            _ => None,
        }
    }

    /// Whether `id` is a cell the new version created (joined to an old one or not).
    pub fn is_new_cell(&self, id: usize) -> bool {
        matches!(self.cells.get(&id), Some(Cell::Joined(..) | Cell::Adopted))
    }

    /// The new version's functions (as `is_new_fn` knows them).
    pub fn new_fns(&self) -> &AddrSet {
        &self.new_fn_at
    }

    /// Every cell the new version created, with the old cell it joins if it does.
    pub fn new_cells(&self) -> impl Iterator<Item = (usize, Option<(u32, c_int)>)> + '_ {
        self.cells.iter().filter_map(|(&id, c)| match *c {
            Cell::Joined(f, n) => Some((id, Some((f, n)))),
            Cell::Adopted => Some((id, None)),
            Cell::Claimed => None,
        })
    }

    /// Pushes the anchor table itself (also while it is held).
    ///
    /// # Safety
    /// One free stack slot.
    pub unsafe fn push_anchors(&self, l: *mut lua_State) {
        // SAFETY: forwarded.
        unsafe { self.tab.push_table(l) }
    }

    /// Keeps the anchor table in `holder[key]` from now on, not on the stack (see
    /// `Anchors::hold`).
    ///
    /// # Safety
    /// The anchor table is still at its stack index; `holder` stays at its index.
    pub unsafe fn hold(&mut self, l: *mut lua_State, holder: c_int, key: lua::lua_Integer) {
        // SAFETY: forwarded.
        unsafe { self.tab.hold(l, holder, key) }
    }

    /// Pushes the anchor table for a step that reads and writes it a lot (`apply`), until
    /// [`Plan::unplace`].
    ///
    /// # Safety
    /// One free stack slot, which stays until `unplace`.
    pub unsafe fn place(&mut self, l: *mut lua_State) -> c_int {
        // SAFETY: forwarded.
        unsafe { self.tab.place(l) }
    }

    /// Back to the held anchor table (the caller drops the slot `place` pushed).
    pub fn unplace(&mut self) {
        self.tab.unplace();
    }

    /// Keeps the value at `idx` alive with the plan's objects; returns its slot.
    ///
    /// # Safety
    /// Inside `protect` (allocates); two free stack slots.
    pub unsafe fn anchor(&mut self, l: *mut lua_State, idx: c_int) -> u32 {
        // SAFETY: as documented.
        unsafe { anchor_new(l, self.tab, &mut self.n_anchors, idx) }
    }

    /// The value at `idx` as an operand: inline data, or anchored.
    ///
    /// # Safety
    /// As `anchor`.
    pub unsafe fn capture(&mut self, l: *mut lua_State, idx: c_int) -> Pv {
        // SAFETY: as documented.
        unsafe { inline_operand(read(l, idx)).unwrap_or_else(|| Pv::Slot(self.anchor(l, idx))) }
    }

    /// Pushes the anchored value in `slot`.
    ///
    /// # Safety
    /// Two free stack slots.
    pub unsafe fn push(&self, l: *mut lua_State, slot: u32) {
        // SAFETY: as documented.
        unsafe { self.tab.get(l, slot) }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scope {
    /// A table of the module: deleted keys go, metatables merge.
    Module,
    /// The globals a chunk assigned: only those keys, nothing deleted.
    Globals,
}

#[derive(Debug)]
enum Item {
    Tables { at: Pair, live: u32, new: u32, base: Option<NodeId>, node: NodeId, scope: Scope },
    Fns { at: Pair, live: u32, new: u32, base: Option<NodeId>, node: NodeId },
    AdoptTable { new: u32, node: NodeId },
    AdoptFn { new: u32, node: NodeId },
    Cell { f: u32, n: c_int },
}

/// The addresses of a running object and of the new one paired with it.
#[derive(Clone, Copy, Debug, Default)]
struct Pair {
    old: usize,
    new: usize,
}

/// An entry of a paired table whose key is a table or a function: its running counterpart
/// is only known once all pairs are found.
#[derive(Debug)]
struct Deferred {
    t: u32,
    k: u32,
    v: u32,
}

pub struct Planner<'o> {
    old: &'o Snapshot,
    /// unmarked while the plan is made if the collector is held (written in place)
    tab: Anchors,
    n_anchors: u32,
    /// the new version's objects (and any running one anchored as a value)
    objs: PtrMap<Obj>,
    /// running objects already paired with a new one, and old cells a new cell joins: sets
    /// of addresses in the order they were allocated, so bitmaps (`AddrSet`) hold them in a
    /// fraction of the memory a hash map would, and their lookups mostly hit the cache
    claimed: AddrSet,
    claimed_cells: AddrSet,
    merged: Vec<usize>,
    /// the new version's functions: allocated together, so a bitmap holds them compactly
    new_fn_at: AddrSet,
    cells: PtrMap<Cell>,
    /// anchor slot of the previous version's functions by base node (`base::push_functions`),
    /// 0 if none are known
    base_fns: u32,
    stop: &'o PtrSet,
    /// the module's own running value, never foreign even where `stop` has it (an alias:
    /// `package.loaded.other = M`)
    own: usize,
    mirror: Builder,
    root: Option<Pv>,
    globals_node: Option<NodeId>,
    paired: Vec<Item>,
    adopt: Vec<Item>,
    deferred: Vec<Deferred>,
    joins: Vec<Join>,
    /// Upvalues of paired functions whose cell joined none when met (function slot, index,
    /// cell id): a function paired later may still join it.
    unjoined: Vec<(u32, c_int, usize)>,
    /// the new version's functions: anchor slot and address
    new_fns: Vec<(u32, usize)>,
    fpairs: Vec<FnPair>,
    acts: Vec<Act>,
    counts: Counts,
}

/// Stack slots a planning step uses at most.
pub const STACK_NEEDED: c_int = 24;

impl<'o> Planner<'o> {
    /// Pushes the anchor table. `stop` holds objects that belong to others (`_G`, other
    /// modules, see [`stop_set`]): the merge never walks into them, except the module's own
    /// running value `own` (0: none), which another name may hold too. `base_fns` is the
    /// stack index of the functions of `old` (`base::push_functions`; 0: none), on top: the
    /// anchor table keeps them and takes their place. With `gc`, the collector stays held
    /// until the plan is finished, and the anchor table is written in place where it can be.
    ///
    /// # Safety
    /// Inside `protect`; `base_fns`, if not 0, is the top.
    pub unsafe fn new(
        l: *mut lua_State,
        old: &'o Snapshot,
        base_fns: c_int,
        stop: &'o PtrSet,
        own: usize,
        gc: Option<&GcPause>,
    ) -> Planner<'o> {
        // The new version is usually the size of the old one: size everything after it.
        let (nodes, _, upvalues) = old.size();
        // SAFETY: plain pushes; a memory error unwinds to `protect`.
        let anchors = unsafe {
            capi::check_stack(l, STACK_NEEDED);
            // both versions' objects, and a quarter more for strings (keys written anew)
            let slots = nodes * 2 + nodes / 2;
            lua::lua_createtable(l, c_int::try_from(slots).unwrap_or(0).max(64), 0);
            lua::lua_gettop(l)
        };
        // the new version's objects and cells, and room for a few more before the first rehash
        let mut objs = PtrMap::default();
        objs.reserve(nodes + nodes / 4 + 64);
        let mut cells = PtrMap::default();
        cells.reserve(upvalues + upvalues / 4 + 64);
        let mut planner = Planner {
            old,
            // SAFETY: the table just pushed, which stays there.
            tab: unsafe { Anchors::at(l, anchors, gc.is_some()) },
            n_anchors: 0,
            objs,
            claimed: AddrSet::default(),
            claimed_cells: AddrSet::default(),
            merged: Vec::with_capacity(nodes),
            new_fn_at: AddrSet::default(),
            cells,
            base_fns: 0,
            stop,
            own,
            mirror: Builder::sized_like(old),
            root: None,
            globals_node: None,
            paired: Vec::new(),
            adopt: Vec::new(),
            deferred: Vec::new(),
            joins: Vec::with_capacity(upvalues),
            unjoined: Vec::new(),
            new_fns: Vec::with_capacity(nodes / 2),
            fpairs: Vec::with_capacity(nodes / 2),
            acts: Vec::with_capacity(nodes / 2),
            counts: Counts::default(),
        };
        if base_fns != 0 {
            // SAFETY: `base_fns` is the top but one (under the anchor table), which moves
            // down into its place once it holds them.
            unsafe {
                planner.base_fns = anchor_new(l, planner.tab, &mut planner.n_anchors, base_fns);
                lua::lua_replace(l, base_fns);
                planner.tab = Anchors::at(l, base_fns, gc.is_some());
            }
        }
        planner
    }

    /// Plans `package.loaded[name]`: `live` is the running value (nil if not loaded), `new`
    /// the value the new version produced. A running table can only merge with a table.
    ///
    /// # Safety
    /// Absolute indices; inside `protect`.
    pub unsafe fn root(
        &mut self,
        l: *mut lua_State,
        live: c_int,
        new: c_int,
    ) -> Result<(), String> {
        // SAFETY: the caller's indices are valid; helpers keep the stack balanced.
        unsafe {
            check_root(l, live, new)?;
            let nv = read(l, new);
            let (keep, base) = if nv.object().is_some() {
                let old = self.old;
                let m = self.merge_slot(l, live, new, old.root());
                (m.d == Decision::Keep, m.was)
            } else {
                (false, Was::of(nv))
            };
            self.mirror.set_root(base);
            self.root = Some(if keep { self.capture(l, live) } else { self.capture(l, new) });
            Ok(())
        }
    }

    /// Plans the globals the chunk assigned (`delta`: key -> new value). With `globals` (the
    /// running global table) they merge into it; without, they are only mirrored.
    ///
    /// # Safety
    /// Absolute indices; inside `protect`.
    pub unsafe fn globals(&mut self, l: *mut lua_State, globals: Option<c_int>, delta: c_int) {
        // SAFETY: the caller's indices are valid.
        unsafe {
            let Val::Table(p) = read(l, delta) else { return };
            let node = self.node_of(p);
            self.globals_node = Some(node);
            let new = self.anchor(l, delta);
            match globals {
                Some(g) => {
                    let live = self.anchor(l, g);
                    let base = self.old.globals;
                    let at = Pair::default();
                    self.paired.push(Item::Tables {
                        at,
                        live,
                        new,
                        base,
                        node,
                        scope: Scope::Globals,
                    });
                }
                None => self.adopt.push(Item::AdoptTable { new, node }),
            }
        }
    }

    /// Walks everything reachable and returns the plan. Pairs are all found before anything
    /// is adopted, so a cell shared with a paired function is joined wherever it appears.
    ///
    /// # Safety
    /// Inside `protect`, after `root`.
    pub unsafe fn finish(mut self, l: *mut lua_State) -> Plan {
        // SAFETY: every step keeps the stack balanced and only touches anchored objects.
        unsafe {
            loop {
                if let Some(item) = self.paired.pop() {
                    // the next pair's two objects are fetched while this one is planned
                    if let Some(Item::Tables { at, .. } | Item::Fns { at, .. }) = self.paired.last()
                    {
                        access::prefetch(at.old);
                        access::prefetch(at.new);
                    }
                    self.process(l, item);
                } else if let Some(d) = self.deferred.pop() {
                    self.deferred_entry(l, d);
                } else {
                    break;
                }
            }
            while let Some(item) = self.adopt.pop() {
                self.process(l, item);
            }
            for &(new_fn, n, id) in &self.unjoined {
                if let Some(&Cell::Joined(old_fn, old_n)) = self.cells.get(&id) {
                    self.joins.push(Join { new_fn, n, old_fn, old_n });
                }
            }
            self.counts.upvalues_joined = self.joins.len() as u32;
            #[cfg(feature = "luajit")]
            self.plan_fenvs(l);
            let functions = self.anchor_functions(l);
            Plan {
                // hooks may run the collector before anything else is anchored
                tab: self.tab.sealed(),
                n_anchors: self.n_anchors,
                acts: self.acts,
                joins: self.joins,
                objs: self.objs,
                merged: self.merged,
                new_fn_at: self.new_fn_at,
                cells: self.cells,
                fpairs: self.fpairs,
                root: self.root.unwrap_or(Pv::Nil),
                counts: self.counts,
                mirror: self.mirror.finish(self.globals_node),
                functions,
            }
        }
    }

    /// Anchors the new version's functions by mirror node: the base functions of the next
    /// reload (see [`base::push_functions`](super::base::push_functions)). Returns the slot.
    unsafe fn anchor_functions(&mut self, l: *mut lua_State) -> u32 {
        // SAFETY: each anchored function is pushed and stored in the fresh table, which is
        // anchored and popped.
        unsafe {
            let n = c_int::try_from(self.new_fns.len()).unwrap_or(0);
            lua::lua_createtable(l, n, 0);
            let t = lua::lua_gettop(l);
            for &(slot, p) in &self.new_fns {
                let Some(o) = self.objs.get(&p).filter(|o| o.node != NO_NODE) else { continue };
                self.tab.get(l, slot);
                lua::lua_rawseti(l, t, lua::lua_Integer::from(o.node) + 1);
            }
            let slot = anchor_new(l, self.tab, &mut self.n_anchors, t);
            lua::lua_pop(l, 1);
            slot
        }
    }

    unsafe fn process(&mut self, l: *mut lua_State, item: Item) {
        // SAFETY: items only name anchored objects.
        unsafe {
            match item {
                Item::Tables { live, new, base, node, scope, .. } => {
                    self.pair_tables(l, live, new, base, node, scope)
                }
                Item::Fns { live, new, base, node, .. } => self.pair_fns(l, live, new, base, node),
                Item::AdoptTable { new, node } => self.adopt_table(l, new, node),
                Item::AdoptFn { new, node } => self.adopt_fn(l, new, node),
                Item::Cell { f, n } => {
                    self.push(l, f);
                    let fi = lua::lua_gettop(l);
                    if capi::get_upvalue(l, fi, n).is_some() {
                        let id = capi::upvalue_id(l, fi, n);
                        self.adopt_cell(l, f, n, id, fi + 1);
                    }
                    access::settop_down(l, fi - 1);
                }
            }
        }
    }

    /// Decides one slot (a field, a metatable, an upvalue cell) whose running value is at
    /// `live` and new value at `new`, queueing the walks it implies.
    unsafe fn merge_slot<'v>(
        &mut self,
        l: *mut lua_State,
        live: c_int,
        new: c_int,
        prior: Prior,
    ) -> Decided<'v> {
        // SAFETY: valid absolute indices from the caller.
        unsafe {
            let (lv, nv): (Val<'v>, Val<'v>) = (read(l, live), read(l, new));
            let equal = identical(lv, nv);
            let (d, was) = self.decide_slot(l, live, new, lv, nv, prior);
            Decided { d, was, new: nv, equal }
        }
    }

    /// `merge_slot` on the values `lv` and `nv` read at `live` and `new`.
    unsafe fn decide_slot<'v>(
        &mut self,
        l: *mut lua_State,
        live: c_int,
        new: c_int,
        lv: Val<'v>,
        nv: Val<'v>,
        prior: Prior,
    ) -> (Decision, Was<'v>) {
        // SAFETY: valid absolute indices from the caller; anchoring keeps objects alive.
        unsafe {
            match nv {
                Val::Table(p) => {
                    if lv == nv || self.foreign(p) {
                        // Not the new version's own table (a shared or foreign one).
                        let d = if lv == nv { Decision::Keep } else { Decision::TakeNew };
                        return (d, Was::Opaque);
                    }
                    let q = match lv {
                        Val::Table(q) if !self.foreign(q) => Some(q),
                        _ => None,
                    };
                    // (`local cache = {}`) a table with nothing to merge, delete or set is
                    // paired, but not planned: the running one stays as it is
                    let base = self.old.child(prior, Kind::Table);
                    let bare =
                        q.is_some() && self.old.is_bare(base) && access::is_bare_table(l, new, p);
                    let not_merged = |o: &Obj| o.flags & MERGED == 0;
                    let (o, paired) =
                        self.meet(l, (live, new), (q, p), not_merged, MERGED | QUEUED, !bare);
                    let node = o.node;
                    if o.flags & MERGED != 0 {
                        // a table of the new version met again: kept if the running slot
                        // already holds the table it merged into
                        let keep = matches!(lv, Val::Table(_)) && {
                            self.push(l, o.pair);
                            let same = lua::lua_rawequal(l, live, -1) != 0;
                            lua::lua_pop(l, 1);
                            same
                        };
                        let d = if keep { Decision::Keep } else { Decision::TakeNew };
                        return (d, Was::Node(node));
                    }
                    if let (Some((live_slot, new_slot)), Some(q)) = (paired, q) {
                        self.merged.push(p);
                        if bare {
                            self.mirror.begin(node, Kind::Table);
                            return (Decision::Keep, Was::Node(node));
                        }
                        let scope = Scope::Module;
                        self.paired.push(Item::Tables {
                            at: Pair { old: q, new: p },
                            live: live_slot,
                            new: new_slot,
                            base,
                            node,
                            scope,
                        });
                        return (Decision::Keep, Was::Node(node));
                    }
                    self.reach_val(l, new, nv);
                    (Decision::TakeNew, Was::Node(node))
                }
                Val::LuaFn(p) => {
                    if lv == nv {
                        return (Decision::Keep, Was::Opaque);
                    }
                    let top = lua::lua_gettop(l);
                    let (old_fn, d) = self.decide_function(l, live, new, lv, prior);
                    let q = old_fn.and_then(|i| read(l, i).object());
                    let unpaired = |o: &Obj| o.pair == 0;
                    let old_at = old_fn.unwrap_or(live);
                    let (o, paired) = self.meet(l, (old_at, new), (q, p), unpaired, QUEUED, true);
                    let node = o.node;
                    access::settop_down(l, top);
                    if let (Some((live_slot, new_slot)), Some(q)) = (paired, q) {
                        self.new_fn_at.insert(p);
                        let base = self.old.child(prior, Kind::Func);
                        let at = Pair { old: q, new: p };
                        self.paired.push(Item::Fns {
                            at,
                            live: live_slot,
                            new: new_slot,
                            base,
                            node,
                        });
                        return (d, Was::Node(node));
                    }
                    self.reach_val(l, new, nv);
                    (d, Was::Node(node))
                }
                // Code, even native: the new version's wins unless it is the very same one.
                Val::CFn(_) => {
                    let d = if lv == nv { Decision::Keep } else { Decision::TakeNew };
                    (d, Was::Opaque)
                }
                _ => (decide(prior, lv, nv), Was::of(nv)),
            }
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
    unsafe fn decide_function(
        &mut self,
        l: *mut lua_State,
        live: c_int,
        new: c_int,
        lv: Val,
        prior: Prior,
    ) -> (Option<c_int>, Decision) {
        // SAFETY: as documented; the base functions' table is at `base_fns`.
        unsafe {
            match self.push_base_fn(l, prior) {
                Some(b) if lua::lua_rawequal(l, b, live) != 0 => (Some(live), Decision::TakeNew),
                Some(b) => {
                    if same_code(l, b, new) {
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
    unsafe fn push_base_fn(&mut self, l: *mut lua_State, prior: Prior) -> Option<c_int> {
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

    unsafe fn mark_new_fn(&mut self, l: *mut lua_State, idx: c_int) {
        // SAFETY: a valid index.
        if let Val::LuaFn(p) = unsafe { read(l, idx) } {
            self.new_fn_at.insert(p);
        }
    }

    /// Whether the table at `p` belongs to someone else (see [`Planner::new`]).
    fn foreign(&self, p: usize) -> bool {
        p != self.own && self.stop.contains(&p)
    }

    fn obj(&mut self, p: usize) -> &mut Obj {
        self.objs.entry(p).or_default()
    }

    /// The mirror node of the new object at `p`.
    fn node_of(&mut self, p: usize) -> NodeId {
        self.new_obj(p).node
    }

    /// What the planner knows about the new object at `p`, which has a mirror node.
    fn new_obj(&mut self, p: usize) -> Obj {
        *new_entry(&mut self.objs, &mut self.mirror, p)
    }

    /// Meets the new object `p`, at stack index `new`, in a slot whose running value is the
    /// object `q` (if any), at `live`: gives `p` a mirror node if it has none, and if
    /// `may_pair` says so of `p` and `q` was not paired yet, pairs them (marking `p` with
    /// `flags`) and anchors the running one, and the new one if `with_new` (else its slot
    /// is 0 until something anchors it). Returns what was known of `p` before pairing, and
    /// the (running, new) anchor slots if they were paired now. One lookup of `p` in all.
    unsafe fn meet(
        &mut self,
        l: *mut lua_State,
        (live, new): (c_int, c_int),
        (q, p): (Option<usize>, usize),
        may_pair: impl Fn(&Obj) -> bool,
        flags: u8,
        with_new: bool,
    ) -> (Obj, Option<(u32, u32)>) {
        let Planner { objs, mirror, claimed, tab, n_anchors, .. } = self;
        let to = *tab;
        let o = new_entry(objs, mirror, p);
        let before = *o;
        match q {
            Some(q) if may_pair(o) && claimed.insert(q) => {
                // SAFETY: valid indices from the caller.
                let live_slot = unsafe { anchor_new(l, to, n_anchors, live) };
                o.pair = live_slot;
                o.flags |= flags;
                let new_slot = if with_new {
                    // SAFETY: as above.
                    unsafe { anchor_obj(l, to, n_anchors, o, new) }
                } else {
                    o.slot
                };
                (before, Some((live_slot, new_slot)))
            }
            _ => (before, None),
        }
    }

    /// What the planner knows about the cell `id`.
    fn cell(&self, id: usize) -> Option<Cell> {
        match self.cells.get(&id) {
            Some(&c) => Some(c),
            None if self.claimed_cells.contains(id) => Some(Cell::Claimed),
            None => None,
        }
    }

    /// The base to record for a value reached without deciding it (a walked object's node).
    fn base_of<'v>(&mut self, v: Val<'v>) -> Was<'v> {
        match v {
            Val::Table(p) if self.foreign(p) => Was::Opaque,
            Val::Table(p) | Val::LuaFn(p) => Was::Node(self.node_of(p)),
            _ => Was::of(v),
        }
    }

    /// Queues a new object with no running counterpart (yet) for adoption.
    unsafe fn reach(&mut self, l: *mut lua_State, idx: c_int) {
        // SAFETY: valid index from the caller.
        unsafe { self.reach_val(l, idx, read(l, idx)) }
    }

    /// `reach` of the value `v` read at `idx`.
    unsafe fn reach_val(&mut self, l: *mut lua_State, idx: c_int, v: Val) {
        // SAFETY: valid index from the caller.
        unsafe {
            let (p, table) = match v {
                Val::Table(p) if !self.foreign(p) => (p, true),
                Val::LuaFn(p) => (p, false),
                _ => return,
            };
            let o = *self.obj(p);
            if o.flags & QUEUED != 0 || o.pair != 0 {
                return;
            }
            self.obj(p).flags |= QUEUED;
            let node = self.node_of(p);
            let new = self.anchor_val(l, idx, v);
            self.adopt.push(if table {
                Item::AdoptTable { new, node }
            } else {
                Item::AdoptFn { new, node }
            });
        }
    }

    fn is_merged(&self, v: Val) -> bool {
        matches!(v, Val::Table(p) if self.objs.get(&p).is_some_and(|o| o.flags & MERGED != 0))
    }

    unsafe fn pair_tables(
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
    unsafe fn merge_entry<'v>(
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
    unsafe fn record_set(&mut self, l: *mut lua_State, t: u32, k: c_int, new: c_int, m: &Decided) {
        self.count_value(m);
        if m.takes_new() {
            // SAFETY: valid indices from the caller.
            let (k, v) = unsafe { (self.capture(l, k), self.capture_val(l, new, m.new)) };
            self.acts.push(Act::Set { t, k, v });
        }
    }

    /// Counts a slot of data in the new source (not a function or a table, counted as such)
    /// for the report: kept as it runs, or taken from the source.
    fn count_value(&mut self, m: &Decided) {
        let data = !matches!(m.new, Val::Table(_) | Val::LuaFn(_) | Val::CFn(_));
        if m.d == Decision::Keep {
            if data {
                self.counts.values_kept += 1;
            }
        } else if data && !m.equal {
            self.counts.values_taken += 1;
        }
    }

    /// Rule 5: a key the base had and the new source no longer has is removed.
    unsafe fn plan_deletions(
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
                        self.acts.push(Act::Set { t: live, k, v: Pv::Nil });
                        self.counts.keys_removed += 1;
                    }
                }
                access::settop_down(l, top);
            }
        }
    }

    /// Rule 6: metatables merge like tables (read raw: `__metatable` does not hide them).
    unsafe fn pair_metatables(
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
                self.acts.push(Act::Meta { t: live, mt: Pv::Nil });
            }
            access::settop_down(l, top);
        }
    }

    unsafe fn pair_fns(
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
            self.fpairs.push(FnPair { old: live, new, at, source });
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
                                        self.acts.push(Act::Up { f: live, n: j, v });
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

    unsafe fn adopt_table(&mut self, l: *mut lua_State, new: u32, node: NodeId) {
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

    unsafe fn adopt_fn(&mut self, l: *mut lua_State, new: u32, node: NodeId) {
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
    unsafe fn adopt_cell(&mut self, l: *mut lua_State, f: u32, n: c_int, id: usize, value: c_int) {
        if self.cell(id).is_some() {
            return;
        }
        self.cells.insert(id, Cell::Adopted);
        // SAFETY: `value` is the cell's value on the stack.
        unsafe {
            if self.is_merged(read(l, value)) {
                let v = self.capture(l, value);
                self.acts.push(Act::Up { f, n, v });
            }
            self.reach(l, value);
        }
    }

    /// An entry of a paired table keyed by a table or a function (see [`Deferred`]).
    unsafe fn deferred_entry(&mut self, l: *mut lua_State, d: Deferred) {
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
            let dec = self.merge_slot(l, live, vi, Prior::Unknown).d;
            let renamed = matches!(kv, Val::LuaFn(_)) && lua::lua_type(l, live) != lua::LUA_TNIL;
            if let (true, Some(lk)) = (renamed, live_key) {
                // old_function -> v becomes new_function -> v
                self.acts.push(Act::Unset { t: d.t, k: Pv::Slot(lk) });
                let value = if dec == Decision::Keep { live } else { vi };
                let v = self.capture(l, value);
                self.acts.push(Act::Set { t: d.t, k: Pv::Slot(d.k), v });
            } else if dec == Decision::TakeNew && lua::lua_rawequal(l, live, vi) == 0 {
                self.reach(l, ki);
                let k = match (kv, live_key) {
                    (Val::Table(_), Some(lk)) => Pv::Slot(lk),
                    _ => Pv::Slot(d.k),
                };
                let v = self.capture(l, vi);
                self.acts.push(Act::Set { t: d.t, k, v });
            }
            access::settop_down(l, top);
        }
    }

    /// LuaJIT: a new function whose environment is a new table that merged into a running
    /// one (a `module()`-style module, or `setfenv`) gets the running table as environment.
    #[cfg(feature = "luajit")]
    unsafe fn plan_fenvs(&mut self, l: *mut lua_State) {
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

    /// Keeps the value at `idx` alive until the plan is applied; returns its slot. Objects
    /// get one slot each however often they are anchored.
    unsafe fn anchor(&mut self, l: *mut lua_State, idx: c_int) -> u32 {
        // SAFETY: valid index.
        unsafe { self.anchor_val(l, idx, read(l, idx)) }
    }

    /// `anchor` of the value `v` read at `idx`.
    unsafe fn anchor_val(&mut self, l: *mut lua_State, idx: c_int, v: Val) -> u32 {
        // SAFETY: valid index; the anchor table is at `self.tab`.
        unsafe {
            let identity = match v {
                Val::Table(p)
                | Val::LuaFn(p)
                | Val::CFn(p)
                | Val::Userdata(p)
                | Val::Thread(p)
                | Val::Cdata(p, _) => Some(p),
                _ => None,
            };
            match identity {
                Some(p) => {
                    let o = self.objs.entry(p).or_default();
                    anchor_obj(l, self.tab, &mut self.n_anchors, o, idx)
                }
                None => anchor_new(l, self.tab, &mut self.n_anchors, idx),
            }
        }
    }

    /// The value at `idx` as an action operand.
    unsafe fn capture(&mut self, l: *mut lua_State, idx: c_int) -> Pv {
        // SAFETY: valid index.
        unsafe { self.capture_val(l, idx, read(l, idx)) }
    }

    /// `capture` of the value `v` read at `idx`.
    unsafe fn capture_val(&mut self, l: *mut lua_State, idx: c_int, v: Val) -> Pv {
        // SAFETY: valid index.
        unsafe { inline_operand(v).unwrap_or_else(|| Pv::Slot(self.anchor_val(l, idx, v))) }
    }

    unsafe fn push(&self, l: *mut lua_State, slot: u32) {
        // SAFETY: the anchor table is at `self.tab`.
        unsafe { self.tab.get(l, slot) }
    }
}

/// Whether the value at `new` can replace the running module at `live`: a running table
/// only merges with a table.
///
/// # Safety
/// Valid indices.
pub unsafe fn check_root(l: *mut lua_State, live: c_int, new: c_int) -> Result<(), String> {
    // SAFETY: forwarded.
    unsafe {
        if matches!(read(l, live), Val::Table(_)) && !matches!(read(l, new), Val::Table(_)) {
            return Err(format!(
                "the new version returns a {}, but the loaded module is a table; \
                 a reload cannot turn one into the other without breaking references to it",
                capi::type_name(l, new)
            ));
        }
        Ok(())
    }
}

/// The entry of the new object at `p`, given a mirror node the first time.
fn new_entry<'m>(objs: &'m mut PtrMap<Obj>, mirror: &mut Builder, p: usize) -> &'m mut Obj {
    let o = objs.entry(p).or_default();
    if o.node == NO_NODE {
        o.node = mirror.new_node();
    }
    o
}

/// The anchor slot of the object `o`, at `idx`: anchored in a new slot the first time.
///
/// # Safety
/// As [`anchor_new`].
unsafe fn anchor_obj(
    l: *mut lua_State,
    anchors: Anchors,
    n: &mut u32,
    o: &mut Obj,
    idx: c_int,
) -> u32 {
    if o.slot == 0 {
        // (if the write fails, the whole plan is thrown away)
        // SAFETY: forwarded.
        o.slot = unsafe { anchor_new(l, anchors, n, idx) };
    }
    o.slot
}

/// Stores the value at `idx` in the next slot of the anchor table, of which `n` slots are
/// taken; returns the slot.
///
/// # Safety
/// Valid indices; one free stack slot; inside `protect` (allocates).
unsafe fn anchor_new(l: *mut lua_State, anchors: Anchors, n: &mut u32, idx: c_int) -> u32 {
    *n += 1;
    // SAFETY: as documented.
    unsafe { anchors.store(l, *n, idx) };
    *n
}

/// A slot `merge_slot` decided: the decision, the base to record for the new value, the
/// two values it read, and whether they are raw-equal.
struct Decided<'v> {
    d: Decision,
    was: Was<'v>,
    new: Val<'v>,
    equal: bool,
}

impl Decided<'_> {
    /// Whether the slot is to be written: the new value wins and is not the running one.
    fn takes_new(&self) -> bool {
        self.d != Decision::Keep && !self.equal
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

/// A value that an operand carries inline (no anchor needed), or `None` for an object.
fn inline_operand(v: Val) -> Option<Pv> {
    match v {
        Val::Nil => Some(Pv::Nil),
        Val::Bool(b) => Some(Pv::Bool(b)),
        Val::Int(i) => Some(Pv::Int(i)),
        Val::Num(n) => Some(Pv::Num(n)),
        _ => None,
    }
}

/// Pushes a key of the base mirror as a Lua value.
unsafe fn push_key(l: *mut lua_State, key: KeyRef) {
    use super::base::Key;
    // SAFETY: one push each.
    unsafe {
        match key {
            KeyRef::Str(s) => capi::push_bytes(l, s),
            KeyRef::Other(Key::Bool(b)) => lua::lua_pushboolean(l, c_int::from(b)),
            KeyRef::Other(Key::Int(i)) => push_int(l, i),
            KeyRef::Other(Key::Num(bits)) => lua::lua_pushnumber(l, f64::from_bits(bits)),
            KeyRef::Other(Key::Light(p)) => lua::lua_pushlightuserdata(l, p as *mut _),
        }
    }
}

/// Pushes an integer as Lua's integer subtype where there is one.
///
/// # Safety
/// One free stack slot.
pub unsafe fn push_int(l: *mut lua_State, i: i64) {
    // SAFETY: one push.
    unsafe {
        #[cfg(not(feature = "luajit"))]
        lua::lua_pushinteger(l, i);
        #[cfg(feature = "luajit")]
        lua::lua_pushnumber(l, i as f64);
    }
}

/// The objects a merge must never walk into: the global table, the registry, and every
/// module's value (each reloads on its own; a planner exempts the one it merges). One pass
/// over `package.loaded`, shared by every module of a batch.
///
/// # Safety
/// Inside `protect`; a few free stack slots.
pub unsafe fn stop_set(l: *mut lua_State) -> PtrSet {
    let mut stop = PtrSet::default();
    // SAFETY: plain reads of the registry, `_LOADED` and the globals; stack restored.
    unsafe {
        let top = lua::lua_gettop(l);
        stop.insert(lua::lua_topointer(l, lua::LUA_REGISTRYINDEX) as usize);
        capi::push_globals(l);
        stop.insert(lua::lua_topointer(l, -1) as usize);
        capi::push_loaded(l);
        let loaded = lua::lua_gettop(l);
        if lua::lua_type(l, loaded) == lua::LUA_TTABLE {
            stop.insert(lua::lua_topointer(l, loaded) as usize);
            let mut entries = access::Entries::new(l, loaded);
            while entries.next(l) {
                if let Some(p) = read(l, -1).object() {
                    stop.insert(p);
                }
                lua::lua_pop(l, 1);
            }
        }
        capi::push_bytes(l, b"");
        if lua::lua_getmetatable(l, -1) != 0 {
            stop.insert(lua::lua_topointer(l, -1) as usize);
        }
        lua::lua_settop(l, top);
    }
    stop
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
