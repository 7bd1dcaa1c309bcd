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
mod changes;
mod functions;
mod slot;
mod tables;

use anchors::Anchors;
use changes::Changes;

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
pub enum Operand {
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
        k: Operand,
        v: Operand,
    },
    /// `t[k] = nil` with `k` taken as is: an old key being renamed or redirected.
    Unset {
        t: u32,
        k: Operand,
    },
    Meta {
        t: u32,
        mt: Operand,
    },
    Upvalue {
        f: u32,
        n: c_int,
        v: Operand,
    },
    #[cfg_attr(not(feature = "luajit"), allow(dead_code))]
    Fenv {
        f: u32,
        env: Operand,
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
    pub fn_pairs: Vec<FnPair>,
    /// What `package.loaded[name]` holds afterwards.
    pub root: Operand,
    pub counts: Counts,
    pub mirror: Snapshot,
    /// Anchor slot of the new version's functions by mirror node (`base::set_functions`).
    pub functions: u32,
    /// What the reload changed, by key path (`changes = true` only).
    pub changed: Option<Vec<String>>,
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
    pub unsafe fn capture(&mut self, l: *mut lua_State, idx: c_int) -> Operand {
        // SAFETY: as documented.
        unsafe {
            inline_operand(read(l, idx)).unwrap_or_else(|| Operand::Slot(self.anchor(l, idx)))
        }
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

/// An object on the stack: its index, and its address.
#[derive(Clone, Copy, Debug)]
struct Located {
    idx: c_int,
    at: usize,
}

/// How `Planner::meet` pairs a new object with a running one.
#[derive(Clone, Copy, Debug)]
enum Pairing {
    /// A table merges into the running table (once); `anchor_new`: the new copy is anchored
    /// too (not for a bare table, which is not planned).
    Table { anchor_new: bool },
    /// A function replaces the running function (once).
    Function,
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
    root: Option<Operand>,
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
    fn_pairs: Vec<FnPair>,
    acts: Vec<Act>,
    counts: Counts,
    /// what the reload changed, by path, when asked for (`changes = true`)
    changes: Option<Changes>,
}

/// Stack slots a planning step uses at most.
pub const STACK_NEEDED: c_int = 24;

impl<'o> Planner<'o> {
    /// Records what the reload changes, by key path (`Plan::changed`).
    pub fn record_changes(&mut self) {
        self.changes = Some(Changes::default());
    }

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
            fn_pairs: Vec::with_capacity(nodes / 2),
            acts: Vec::with_capacity(nodes / 2),
            counts: Counts::default(),
            changes: None,
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
                (m.decision == Decision::Keep, m.was)
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
                    self.prefetch_next();
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
            let mirror = self.mirror.finish(self.globals_node);
            let changed = self.changes.take().map(|c| c.named(&mirror, self.old));
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
                fn_pairs: self.fn_pairs,
                root: self.root.unwrap_or(Operand::Nil),
                counts: self.counts,
                mirror,
                functions,
                changed,
            }
        }
    }

    /// While one pair is planned, the CPU fetches the two objects of the pair after the next
    /// one, and what the next pair of functions reads past their headers (fetched one pair
    /// before): a pair reads objects the program has not touched since they were made, so
    /// most of its reads would otherwise wait for memory one after the other.
    fn prefetch_next(&self) {
        let at = |back: usize| match self.paired.len().checked_sub(back) {
            Some(i) => match self.paired.get(i) {
                Some(Item::Tables { at, .. }) => Some((*at, false)),
                Some(Item::Fns { at, .. }) => Some((*at, true)),
                _ => None,
            },
            None => None,
        };
        if let Some((at, _)) = at(2) {
            access::prefetch(at.old);
            access::prefetch(at.new);
        }
        match at(1) {
            // SAFETY: both functions of a pair are live Lua functions (`decide_lua_function`
            // pairs a new Lua function with the base's function or a running one of the same
            // chunk), anchored until the plan is dropped.
            Some((at, true)) => unsafe {
                access::prefetch_function(at.old);
                access::prefetch_function(at.new);
            },
            Some((at, false)) => {
                access::prefetch(at.old);
                access::prefetch(at.new);
            }
            None => {}
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

    /// Meets the new object at `new` in a slot whose running value may pair with it (the
    /// object at `running`, if any): gives the new object a mirror node if it has none, and
    /// pairs the two if the rule of `kind` allows it and the running object was not paired
    /// yet, anchoring the running one, and the new one too unless `kind` says not to (its
    /// slot is then 0 until something anchors it). Returns what was known of the new object
    /// before, and the (running, new) anchor slots if they were paired now. One lookup of
    /// the new object in all.
    unsafe fn meet(
        &mut self,
        l: *mut lua_State,
        running: Option<Located>,
        new: Located,
        kind: Pairing,
    ) -> (Obj, Option<(u32, u32)>) {
        let Planner { objs, mirror, claimed, tab, n_anchors, .. } = self;
        let to = *tab;
        let o = new_entry(objs, mirror, new.at);
        let before = *o;
        let may_pair = match kind {
            Pairing::Table { .. } => o.flags & MERGED == 0,
            Pairing::Function => o.pair == 0,
        };
        match running {
            Some(running) if may_pair && claimed.insert(running.at) => {
                // SAFETY: valid indices from the caller.
                let running_slot = unsafe { anchor_new(l, to, n_anchors, running.idx) };
                o.pair = running_slot;
                let (flags, anchor_new_one) = match kind {
                    Pairing::Table { anchor_new } => (MERGED | QUEUED, anchor_new),
                    Pairing::Function => (QUEUED, true),
                };
                o.flags |= flags;
                let new_slot = if anchor_new_one {
                    // SAFETY: as above.
                    unsafe { anchor_obj(l, to, n_anchors, o, new.idx) }
                } else {
                    o.slot
                };
                (before, Some((running_slot, new_slot)))
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
    unsafe fn capture(&mut self, l: *mut lua_State, idx: c_int) -> Operand {
        // SAFETY: valid index.
        unsafe { self.capture_val(l, idx, read(l, idx)) }
    }

    /// `capture` of the value `v` read at `idx`.
    unsafe fn capture_val(&mut self, l: *mut lua_State, idx: c_int, v: Val) -> Operand {
        // SAFETY: valid index.
        unsafe { inline_operand(v).unwrap_or_else(|| Operand::Slot(self.anchor_val(l, idx, v))) }
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

/// A value that an operand carries inline (no anchor needed), or `None` for an object.
fn inline_operand(v: Val) -> Option<Operand> {
    match v {
        Val::Nil => Some(Operand::Nil),
        Val::Bool(b) => Some(Operand::Bool(b)),
        Val::Int(i) => Some(Operand::Int(i)),
        Val::Num(n) => Some(Operand::Num(n)),
        _ => None,
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
