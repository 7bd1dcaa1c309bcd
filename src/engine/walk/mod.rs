//! Replacing old functions everywhere in the VM after a reload, so that no part of the
//! program keeps running the old code: the registry (and so `_G`, `package.loaded` and every
//! host reference), table keys and values, metatables (the per-type ones too), userdata user
//! values, closure upvalues, and the locals of the Lua frames of every thread. The walk is
//! iterative and visits each object once.
//!
//! Two kinds of old functions are replaced:
//! - those the plan paired with a new version (module functions, local helpers, functions in
//!   local tables, a function module, redefined globals);
//! - closures a factory of the module made before the reload: matched to the new version of
//!   their prototype by their place in the enclosing function (see `proto`), re-created from
//!   it, and joined to their own upvalue cells, so they run the new body with their own state.
//!   A closure that cannot be matched safely stays as it is, and is counted.
//!
//! It also joins the cells of new closures the plan never saw (a callback the new top level
//! registered elsewhere) to the old cells, like the plan's own functions, and points every
//! reference to a new table that merged into a running one (the new top level's `M`, held
//! by such a callback) at the running table.

use std::ffi::CStr;
use std::os::raw::c_int;

use mlua::ffi as lua;

use super::plan::Plan;
use super::ptrmap::{AddrSet, PtrMap};

mod factory;

use crate::vm::access;
use crate::vm::capi::{self, lua_State};
use crate::vm::registry::{FUNCTIONS, key};
use factory::Factories;

/// Upvalue cells and tables read in place.
#[cfg(any(feature = "luajit", feature = "lua54"))]
use crate::vm::access::in_place;

/// What the walk did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Slots that held an old function and now hold its new version.
    pub references: u32,
    /// Closures made before the reload that now run the new version of their prototype.
    pub closures_updated: u32,
    /// Old closures of the reloaded code that could not be matched: they keep the old code.
    pub closures_left: u32,
}

/// An anchored value: (plan, anchor slot in that plan).
type Ref = (usize, u32);

/// The plans' answers about objects (new functions, merged copies, new cells) in one index,
/// for a batch of several plans: asking each plan in turn would cost the walk a look per
/// plan at every object it meets.
struct Index {
    new_fns: AddrSet,
    copies: PtrMap<Ref>,
    /// new cell -> (plan, the old function and upvalue index it joins, if any)
    cells: PtrMap<(usize, Option<(u32, c_int)>)>,
}

impl Index {
    fn of(plans: &[Plan]) -> Index {
        let mut index = Index {
            new_fns: AddrSet::default(),
            copies: PtrMap::default(),
            cells: PtrMap::default(),
        };
        for (pi, plan) in plans.iter().enumerate() {
            index.new_fns.extend_from(plan.new_fns());
            for &p in plan.merged() {
                if let Some(slot) = plan.merged_into(p) {
                    index.copies.insert(p, (pi, slot));
                }
            }
            for (id, joined) in plan.new_cells() {
                index.cells.insert(id, (pi, joined));
            }
        }
        index
    }
}

/// What a look at a value found.
enum Sight {
    /// An old function: the anchor slot of its replacement.
    Replace(Ref),
    /// A table the walk has not seen yet.
    NewTable,
    Nothing,
}

/// What `step_in_place` did.
#[cfg_attr(not(any(feature = "luajit", feature = "lua54")), allow(dead_code))] // only `Api` on Lua 5.1 to 5.3
enum Step {
    /// Entered a table, or passed a slot it had already seen.
    Done,
    /// Pushed the next entry's key and value.
    Pushed,
    /// No entries left.
    End,
    /// The table is not read in place: `lua_next` it.
    Api,
}

/// A table being walked: read in place (LuaJIT, Lua 5.4), or by `lua_next` from nil
/// (resuming it from any other key would skip the hash entries placed before that key).
struct Frame {
    /// (weak keys, weak values)
    weak: (bool, bool),
    /// LuaJIT and Lua 5.4: the table read in place, instead of by `lua_next`
    #[cfg(any(feature = "luajit", feature = "lua54"))]
    cursor: Option<in_place::Cursor>,
}

/// Whether `lua_getlocal` named a temporary slot rather than a local or a vararg:
/// `(temporary)` and `(C temporary)` on PUC Lua, `(*temporary)` on LuaJIT.
fn is_temporary(name: &[u8]) -> bool {
    name.ends_with(b"temporary)")
}

/// Levels of tables walked inside one another before the worklist takes over (two Lua stack
/// slots each; LuaJIT lets a C function have 8000).
const MAX_DEPTH: usize = 200;

/// Stack slots the walk uses at most (the engine reserves them before applying anything).
pub const STACK_NEEDED: c_int = 32 + 2 * MAX_DEPTH as c_int;

struct Walker<'p> {
    plans: &'p mut [Plan],
    /// the tables being walked, innermost last
    frames: Vec<Frame>,
    /// old function -> its replacement
    map: PtrMap<Ref>,
    /// objects seen; the merged copies (`copy_of`) are in from the start, so that the many
    /// tables seen for the first time need no look in the plans
    visited: AddrSet,
    /// tables can be read in place (`luajit/tables`, `lua54/tables`)
    in_place: bool,
    /// worklist (a Lua table used as a stack)
    work: c_int,
    top: lua::lua_Integer,
    /// table keys to rename once the walk is over: (table, old key, new key) triples
    keys: c_int,
    n_keys: lua::lua_Integer,
    /// what the walk knows to place closures in the plans' old functions
    factories: Factories,
    current: usize,
    /// per plan
    out: Vec<Outcome>,
    /// the plans' answers in one index, for a batch of several
    index: Option<Index>,
}

/// Replaces every reference to an old function the plans (or a factory) give a new version.
///
/// # Safety
/// Inside `protect`, after `apply`, with the plans' anchor tables held (`Plan::hold`) and the
/// collector paused.
pub unsafe fn replace(l: *mut lua_State, plans: &mut [Plan]) -> Vec<Outcome> {
    // SAFETY: every step keeps the stack balanced; objects are pushed before use.
    unsafe {
        capi::check_stack(l, STACK_NEEDED);
        let top = lua::lua_gettop(l);
        let mut w = Walker::new(l, plans);
        w.in_place = access::reads_tables_in_place(l);
        w.roots(l);
        let base = lua::lua_gettop(l);
        while w.top > 0 {
            capi::rawgeti(l, w.work, w.top as u32);
            w.top -= 1;
            w.visit(l, base + 1, access::object_at(l, base + 1).0);
            access::settop_down(l, base);
        }
        w.rename_keys(l);
        lua::lua_settop(l, top);
        w.out
    }
}

impl<'p> Walker<'p> {
    unsafe fn new(l: *mut lua_State, plans: &'p mut [Plan]) -> Walker<'p> {
        // SAFETY: plain pushes and reads of anchored functions.
        unsafe {
            let n_plans = plans.len();
            let pairs = plans.iter().map(|p| p.fn_pairs.len()).sum();
            let mut map = PtrMap::with_capacity_and_hasher(pairs, Default::default());
            let mut visited = AddrSet::default();
            for (pi, plan) in plans.iter().enumerate() {
                plan.push_anchors(l);
                visited.insert(lua::lua_topointer(l, -1) as usize);
                lua::lua_pop(l, 1);
                for &p in plan.merged() {
                    visited.insert(p);
                }
                for pair in &plan.fn_pairs {
                    map.insert(pair.at, (pi, pair.new));
                }
            }
            let index = (n_plans > 1).then(|| Index::of(plans));
            // the base functions hotreload keeps (`base::push_functions`): the reloaded
            // modules' are the new versions already, and a function only they hold is not
            // running code
            if lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&FUNCTIONS)) == lua::LUA_TTABLE {
                visited.insert(lua::lua_topointer(l, -1) as usize);
            }
            lua::lua_pop(l, 1);
            lua::lua_createtable(l, 256, 0);
            let work = lua::lua_gettop(l);
            lua::lua_createtable(l, 0, 0);
            let keys = lua::lua_gettop(l);
            visited.insert(lua::lua_topointer(l, work) as usize);
            visited.insert(lua::lua_topointer(l, keys) as usize);
            Walker {
                plans,
                frames: Vec::new(),
                map,
                visited,
                in_place: false,
                work,
                top: 0,
                keys,
                n_keys: 0,
                factories: Factories::new(),
                current: l as usize,
                out: vec![Outcome::default(); n_plans],
                index,
            }
        }
    }

    unsafe fn push_ref(&self, l: *mut lua_State, (pi, slot): Ref) {
        // SAFETY: the plan's anchor table is on the stack; one push either way.
        unsafe {
            match self.plans.get(pi) {
                Some(plan) => plan.push(l, slot),
                None => lua::lua_pushnil(l),
            }
        }
    }

    /// The outcome of the plan `r` belongs to.
    fn tally(&mut self, r: Ref) -> &mut Outcome {
        let last = self.out.len().saturating_sub(1);
        &mut self.out[r.0.min(last)]
    }

    fn is_new_fn(&self, p: usize) -> bool {
        match (&self.index, &*self.plans) {
            (Some(index), _) => index.new_fns.contains(p),
            (None, [plan]) => plan.is_new_fn(p),
            _ => false,
        }
    }

    /// The running table that the new table at `p` merged into, if it is such a copy.
    fn copy_of(&self, p: usize) -> Option<Ref> {
        match (&self.index, &*self.plans) {
            (Some(index), _) => index.copies.get(&p).copied(),
            (None, [plan]) => plan.merged_into(p).map(|s| (0, s)),
            _ => None,
        }
    }

    fn is_new_cell(&self, id: usize) -> bool {
        match (&self.index, &*self.plans) {
            (Some(index), _) => index.cells.contains_key(&id),
            (None, [plan]) => plan.is_new_cell(id),
            _ => false,
        }
    }

    /// The old function (and its upvalue index) whose cell the new cell `id` joins.
    fn joined_cell(&self, id: usize) -> Option<(Ref, c_int)> {
        match (&self.index, &*self.plans) {
            (Some(index), _) => {
                index.cells.get(&id).and_then(|&(pi, j)| j.map(|(f, n)| ((pi, f), n)))
            }
            (None, [plan]) => plan.joined_cell(id).map(|(f, n)| ((0, f), n)),
            _ => None,
        }
    }

    /// The registry, the running thread, and the metatables each basic type may have.
    unsafe fn roots(&mut self, l: *mut lua_State) {
        // SAFETY: one value pushed and popped per root.
        unsafe {
            lua::lua_pushvalue(l, lua::LUA_REGISTRYINDEX);
            self.examine(l, -1);
            lua::lua_pushthread(l);
            self.examine(l, -1);
            lua::lua_pop(l, 2);
            // nil, boolean, number, string, light userdata, function, thread
            for kind in 0..7 {
                match kind {
                    0 => lua::lua_pushnil(l),
                    1 => lua::lua_pushboolean(l, 0),
                    2 => lua::lua_pushnumber(l, 0.0),
                    3 => capi::push_bytes(l, b""),
                    4 => lua::lua_pushlightuserdata(l, std::ptr::null_mut()),
                    5 => lua::lua_pushcfunction(l, capi::noop),
                    _ => {
                        lua::lua_pushthread(l);
                    }
                }
                if lua::lua_getmetatable(l, -1) != 0 {
                    self.examine(l, -1);
                    lua::lua_pop(l, 1);
                }
                lua::lua_pop(l, 1);
            }
        }
    }

    /// Looks at the value at `idx`: queues it if it is an object not seen yet, and returns
    /// the anchor slot of its replacement if it is an old function.
    unsafe fn examine(&mut self, l: *mut lua_State, idx: c_int) -> Option<Ref> {
        // SAFETY: as `sight`.
        unsafe {
            match self.sight(l, idx) {
                Sight::Replace(slot) => Some(slot),
                Sight::NewTable => {
                    self.enqueue(l, idx);
                    None
                }
                Sight::Nothing => None,
            }
        }
    }

    /// Like `examine`, but leaves a table seen for the first time to the caller, which walks
    /// into it at once (`walk_tables`) instead of queueing it.
    unsafe fn sight(&mut self, l: *mut lua_State, idx: c_int) -> Sight {
        // SAFETY: `idx` is valid.
        unsafe {
            let idx = lua::lua_absindex(l, idx);
            self.sight_typed(l, idx, access::object_at(l, idx))
        }
    }

    /// `sight` of the value at absolute index `idx`, as [`access::object_at`] read it.
    unsafe fn sight_typed(
        &mut self,
        l: *mut lua_State,
        idx: c_int,
        (t, at): (c_int, Option<usize>),
    ) -> Sight {
        // SAFETY: `idx` is valid and absolute; every push below is popped before returning.
        unsafe {
            match t {
                lua::LUA_TTABLE => {
                    let p = at.unwrap_or_else(|| lua::lua_topointer(l, idx) as usize);
                    if self.visited.insert(p) {
                        if self.holds_nothing(p) {
                            return Sight::Nothing;
                        }
                        return Sight::NewTable;
                    }
                    if let Some(slot) = self.copy_of(p) {
                        // a reference to the discarded copy (a callback's upvalue, a table the
                        // new top level registered it in) now refers to the running table
                        self.reach_slot(l, slot);
                        return Sight::Replace(slot);
                    }
                    Sight::Nothing
                }
                lua::LUA_TFUNCTION => {
                    let p = at.unwrap_or_else(|| lua::lua_topointer(l, idx) as usize);
                    if let Some(&slot) = self.map.get(&p) {
                        self.reach_slot(l, slot);
                        return Sight::Replace(slot);
                    }
                    if !self.visited.insert(p) {
                        return Sight::Nothing;
                    }
                    if lua::lua_iscfunction(l, idx) == 0
                        && !self.is_new_fn(p)
                        && let Some(slot) = self.factory_closure(l, idx)
                    {
                        self.map.insert(p, slot);
                        self.reach_slot(l, slot);
                        return Sight::Replace(slot);
                    }
                    self.enqueue(l, idx);
                    Sight::Nothing
                }
                lua::LUA_TUSERDATA | lua::LUA_TTHREAD => {
                    if self.visited.insert(lua::lua_topointer(l, idx) as usize) {
                        self.enqueue(l, idx);
                    }
                    Sight::Nothing
                }
                _ => Sight::Nothing,
            }
        }
    }

    /// Queues a replacement function for a visit (its upvalues are the program's now).
    unsafe fn reach_slot(&mut self, l: *mut lua_State, slot: Ref) {
        // SAFETY: push, look, pop.
        unsafe {
            self.push_ref(l, slot);
            if self.visited.insert(lua::lua_topointer(l, -1) as usize) {
                self.enqueue(l, -1);
            }
            lua::lua_pop(l, 1);
        }
    }

    unsafe fn enqueue(&mut self, l: *mut lua_State, idx: c_int) {
        // SAFETY: the worklist table is at `self.work`.
        unsafe {
            lua::lua_pushvalue(l, idx);
            self.top += 1;
            lua::lua_rawseti(l, self.work, self.top);
        }
    }

    /// Visits the object at `idx`, of type `t`.
    unsafe fn visit(&mut self, l: *mut lua_State, idx: c_int, t: c_int) {
        // SAFETY: `idx` holds an object of the matching type.
        unsafe {
            match t {
                lua::LUA_TTABLE => self.walk_tables(l, idx),
                lua::LUA_TFUNCTION => self.visit_function(l, idx),
                lua::LUA_TUSERDATA => self.visit_userdata(l, idx),
                lua::LUA_TTHREAD => self.visit_thread(l, idx),
                _ => {}
            }
        }
    }

    /// Walks the table at `t` and the tables below it that are new to the walk, depth first:
    /// each level keeps its table (and, past its array part, its `lua_next` key) on the Lua
    /// stack, so nothing is queued for them. Past `MAX_DEPTH` levels, tables go to the
    /// worklist instead.
    unsafe fn walk_tables(&mut self, l: *mut lua_State, t: c_int) {
        // SAFETY: each frame owns two stack slots (table, key) above `base`; a traversal only
        // assigns to existing keys (allowed during `lua_next`); key renames wait for the end.
        unsafe {
            let base = lua::lua_gettop(l);
            lua::lua_pushvalue(l, t);
            self.enter(l);
            loop {
                let depth = self.frames.len() as c_int;
                let Some(frame) = self.frames.last() else { break };
                let (table, key) = (base + 2 * depth - 1, base + 2 * depth);
                let weak = frame.weak;
                let more = match self.step_in_place(l, table) {
                    Step::Done => continue,
                    Step::Pushed => true,
                    Step::End => false,
                    Step::Api => lua::lua_next(l, table) != 0,
                };
                if !more {
                    self.leave(l, table);
                    continue;
                }
                let value = key + 1;
                let k = access::object_at(l, key);
                if k.0 != lua::LUA_TNIL {
                    match self.sight_typed(l, key, k) {
                        Sight::Replace(slot) if !weak.0 => self.defer_key(l, table, key, slot),
                        Sight::NewTable => self.enqueue(l, key),
                        _ => {}
                    }
                }
                let v = access::object_at(l, value);
                if v.0 == lua::LUA_TNIL {
                    access::settop_down(l, key); // plain data: most values
                    continue;
                }
                match self.sight_typed(l, value, v) {
                    Sight::Replace(slot) => {
                        if !weak.1 {
                            lua::lua_pushvalue(l, key);
                            self.push_ref(l, slot);
                            lua::lua_rawset(l, table);
                            self.tally(slot).references += 1;
                        }
                        access::settop_down(l, key);
                    }
                    Sight::NewTable if (depth as usize) < MAX_DEPTH => self.enter(l), // value is the new frame's table
                    Sight::NewTable => {
                        self.enqueue(l, value);
                        access::settop_down(l, key);
                    }
                    Sight::Nothing => access::settop_down(l, key),
                }
            }
            lua::lua_settop(l, base);
        }
    }

    /// Opens a frame for the table on top of the stack: looks at its metatable and notes
    /// whether its keys or values are weak. A weak slot does not hold its function: it is
    /// left to clear when the old version is collected (rule 11), though the walk still goes
    /// through it.
    unsafe fn enter(&mut self, l: *mut lua_State) {
        // SAFETY: the table is on top; the metatable and its field are popped; the frame's
        // key slot (nil) is pushed.
        unsafe {
            let (mut weak_keys, mut weak_values) = (false, false);
            if self.metatable(l, lua::lua_gettop(l)) {
                capi::push_bytes(l, b"__mode");
                if lua::lua_rawget(l, -2) == lua::LUA_TSTRING
                    && let access::Val::Str(mode) = access::read(l, -1)
                {
                    weak_keys = mode.contains(&b'k');
                    weak_values = mode.contains(&b'v');
                }
                lua::lua_pop(l, 2);
            }
            self.frames.push(Frame {
                weak: (weak_keys, weak_values),
                #[cfg(any(feature = "luajit", feature = "lua54"))]
                cursor: self.in_place.then(|| in_place::Cursor::new(l, -1)),
            });
            lua::lua_pushnil(l);
        }
    }

    /// LuaJIT and Lua 5.4, where the innermost frame's table is read in place: takes its next
    /// slot the walk must see. A table new to the walk held under a plain key is entered at
    /// once, without the API (most object slots of a big heap); anything else has its key and
    /// value pushed above `table`, as `lua_next` would.
    #[cfg(any(feature = "luajit", feature = "lua54"))]
    unsafe fn step_in_place(&mut self, l: *mut lua_State, table: c_int) -> Step {
        // SAFETY: the frame's table is at `table`, its key slot just above and the top of the
        // stack past that (`walk_tables` keeps it so); the walk reserved the stack; tables
        // are only resized once the walk is over (`rename_keys`).
        unsafe {
            let depth = self.frames.len();
            debug_assert_eq!(lua::lua_gettop(l), table + 1);
            let Some(cursor) = self.frames.last_mut().and_then(|f| f.cursor.as_mut()) else {
                return Step::Api;
            };
            let Some(slot) = cursor.next() else { return Step::End };
            if let Some(p) = slot.table_under_plain_key()
                && depth < MAX_DEPTH
            {
                if self.visited.insert(p) {
                    if self.holds_nothing(p) {
                        return Step::Done;
                    }
                    in_place::push_table(l, p);
                    if in_place::has_metatable(p) {
                        self.enter(l);
                    } else {
                        let cursor = Some(in_place::Cursor::of(p));
                        self.frames.push(Frame { weak: (false, false), cursor });
                        lua::lua_pushnil(l);
                    }
                    return Step::Done;
                }
                if self.copy_of(p).is_none() {
                    return Step::Done;
                }
            }
            in_place::pop(l, 1);
            slot.push(l);
            Step::Pushed
        }
    }

    #[cfg(not(any(feature = "luajit", feature = "lua54")))]
    unsafe fn step_in_place(&mut self, _: *mut lua_State, _: c_int) -> Step {
        Step::Api
    }

    /// Closes the innermost frame, whose table is at `table`, once it has no entries left.
    unsafe fn leave(&mut self, l: *mut lua_State, table: c_int) {
        // SAFETY: read in place, the frame owns the two slots from `table` up, and nothing
        // is above them; `lua_next` already popped the key.
        unsafe {
            #[cfg(any(feature = "luajit", feature = "lua54"))]
            if self.frames.last().is_some_and(|f| f.cursor.is_some()) {
                debug_assert_eq!(lua::lua_gettop(l), table + 1);
                in_place::pop(l, 2);
                self.frames.pop();
                return;
            }
            debug_assert_eq!(lua::lua_gettop(l), table);
            lua::lua_settop(l, table - 1);
            self.frames.pop();
        }
    }

    unsafe fn defer_key(&mut self, l: *mut lua_State, t: c_int, k: c_int, slot: Ref) {
        // SAFETY: three appends to the key table.
        unsafe {
            for v in [t, k] {
                lua::lua_pushvalue(l, v);
                self.n_keys += 1;
                lua::lua_rawseti(l, self.keys, self.n_keys);
            }
            self.push_ref(l, slot);
            self.n_keys += 1;
            lua::lua_rawseti(l, self.keys, self.n_keys);
        }
        self.tally(slot).references += 1;
    }

    unsafe fn rename_keys(&mut self, l: *mut lua_State) {
        // SAFETY: each triple is pushed, used and popped.
        unsafe {
            let mut i = 1;
            while i + 2 <= self.n_keys {
                lua::lua_rawgeti(l, self.keys, i); // t
                lua::lua_rawgeti(l, self.keys, i + 2); // new key
                lua::lua_rawgeti(l, self.keys, i + 1); // old key
                lua::lua_pushvalue(l, -1);
                lua::lua_rawget(l, -4); // value
                lua::lua_pushvalue(l, -2);
                lua::lua_pushnil(l);
                lua::lua_rawset(l, -6); // t[old] = nil
                lua::lua_remove(l, -2); // t, new, value
                lua::lua_rawset(l, -3); // t[new] = value
                lua::lua_pop(l, 1);
                i += 3;
            }
        }
    }

    unsafe fn visit_function(&mut self, l: *mut lua_State, f: c_int) {
        // SAFETY: upvalue indices come from lua_getupvalue, which stops at the last one, or
        // from the count read in place; joins only ever involve Lua functions.
        unsafe {
            let (lua_fn, p) = match access::read(l, f) {
                access::Val::LuaFn(p) => (true, p),
                access::Val::CFn(p) => (false, p),
                _ => return,
            };
            let new_fn = self.is_new_fn(p);
            #[cfg(any(feature = "luajit", feature = "lua54"))]
            if let Some(ups) = in_place::upvalues(l, f) {
                for i in 1..=ups.count() {
                    let (cell, value) = ups.get(i);
                    if !new_fn && self.joined_cell(cell).is_some() {
                        lua::lua_getupvalue(l, f, i);
                        self.upvalue(l, f, i, true);
                    } else if value.is_object() {
                        in_place::push(l, value);
                        self.upvalue(l, f, i, false);
                    }
                }
                #[cfg(feature = "luajit")]
                if self.needs_visit(in_place::env_of(p)) {
                    self.visit_env(l, f);
                }
                return;
            }
            let mut i = 1;
            while capi::get_upvalue(l, f, i).is_some() {
                self.upvalue(l, f, i, lua_fn && !new_fn);
                i += 1;
            }
            self.visit_env(l, f);
        }
    }

    /// Upvalue `i` of the function at `f`, whose value was just pushed (and is popped): its
    /// replacement if it has one. With `join`, a closure of the new version the plan never
    /// reached first gets the cell the plan's functions joined, if its cell is one of theirs.
    unsafe fn upvalue(&mut self, l: *mut lua_State, f: c_int, i: c_int, join: bool) {
        // SAFETY: `f` is a function with an upvalue `i`; one value above it, popped.
        unsafe {
            if join && let Some((old_fn, old_n)) = self.joined_cell(capi::upvalue_id(l, f, i)) {
                lua::lua_pop(l, 1);
                self.push_ref(l, old_fn);
                capi::join_upvalue(l, f, i, -1, old_n);
                lua::lua_pop(l, 1);
                lua::lua_getupvalue(l, f, i);
            }
            if self.push_replacement(l) {
                lua::lua_setupvalue(l, f, i);
            }
            lua::lua_pop(l, 1);
        }
    }

    /// Whether the table at `p`, read in place, holds nothing the walk looks at: no metatable,
    /// and only plain data in its keys and values (a record of numbers and strings, an empty
    /// cache). It is then not entered at all.
    fn holds_nothing(&self, p: usize) -> bool {
        #[cfg(any(feature = "luajit", feature = "lua54"))]
        if self.in_place {
            // SAFETY: `p` is a live table the walk just reached; the layout was probed.
            return unsafe {
                !in_place::has_metatable(p) && in_place::Cursor::of(p).next().is_none()
            };
        }
        let _ = p;
        false
    }

    /// Whether the table at `p` needs the walk: not seen yet (to walk), or a merged copy (to
    /// replace). The in-place path asks before pushing a function's environment.
    #[cfg(feature = "luajit")]
    fn needs_visit(&self, p: usize) -> bool {
        !self.visited.contains(p) || self.copy_of(p).is_some()
    }

    /// LuaJIT: function, thread and userdata environments.
    unsafe fn visit_env(&mut self, l: *mut lua_State, idx: c_int) {
        #[cfg(feature = "luajit")]
        // SAFETY: lua_getfenv pushes one value.
        unsafe {
            let idx = lua::lua_absindex(l, idx);
            lua::lua_getfenv(l, idx);
            if self.push_replacement(l) {
                lua::lua_setfenv(l, idx);
            }
            lua::lua_pop(l, 1);
        }
        let _ = (l, idx);
    }

    /// If the value on top of the stack has a replacement, pushes it above and counts the
    /// reference it is about to fix; the caller stores it.
    unsafe fn push_replacement(&mut self, l: *mut lua_State) -> bool {
        // SAFETY: one value pushed when true.
        unsafe {
            let Some(slot) = self.examine(l, -1) else { return false };
            self.push_ref(l, slot);
            self.tally(slot).references += 1;
            true
        }
    }

    /// Pushes the metatable of the object at `obj` (absolute) and returns true, or pushes
    /// nothing and returns false. A metatable that is a discarded copy of a merged table
    /// (`setmetatable(obj, M)` in the new top level) is replaced by the running table first.
    unsafe fn metatable(&mut self, l: *mut lua_State, obj: c_int) -> bool {
        // SAFETY: one value is left pushed when true, none when false.
        unsafe {
            if lua::lua_getmetatable(l, obj) == 0 {
                return false;
            }
            if self.push_replacement(l) {
                lua::lua_pushvalue(l, -1);
                lua::lua_setmetatable(l, obj);
                lua::lua_remove(l, -2); // the discarded copy
            }
            true
        }
    }

    unsafe fn visit_userdata(&mut self, l: *mut lua_State, u: c_int) {
        // SAFETY: user value accessors for this Lua version; stack balanced.
        unsafe {
            if self.metatable(l, u) {
                lua::lua_pop(l, 1);
            }
            #[cfg(any(feature = "lua54", feature = "lua55"))]
            {
                let mut n = 1;
                while lua::lua_getiuservalue(l, u, n) != lua::LUA_TNONE {
                    if self.push_replacement(l) {
                        lua::lua_setiuservalue(l, u, n);
                    }
                    lua::lua_pop(l, 1);
                    n += 1;
                }
                lua::lua_pop(l, 1);
            }
            #[cfg(any(feature = "lua52", feature = "lua53"))]
            {
                lua::lua_getuservalue(l, u);
                if self.push_replacement(l) {
                    lua::lua_setuservalue(l, u);
                }
                lua::lua_pop(l, 1);
            }
            self.visit_env(l, u);
        }
    }

    unsafe fn visit_thread(&mut self, l: *mut lua_State, idx: c_int) {
        // SAFETY: frames are inspected with the debug API; values cross threads with
        // lua_xmove after a stack check; the running thread's own C frames (this walk) are
        // skipped.
        unsafe {
            let co = lua::lua_tothread(l, idx);
            if co.is_null() {
                return;
            }
            let own = co as usize == self.current;
            if !own && lua::lua_checkstack(co, 4) == 0 {
                return;
            }
            let mut level = 0;
            let mut ar: lua::lua_Debug = std::mem::zeroed();
            while lua::lua_getstack(co, level, &mut ar) != 0 {
                level += 1;
                if lua::lua_getinfo(co, c"S".as_ptr(), &mut ar) == 0
                    || ar.what.is_null()
                    || CStr::from_ptr(ar.what).to_bytes() == b"C"
                {
                    continue;
                }
                for sign in [1, -1] {
                    let mut n = sign;
                    while let Some(name) = lua::lua_getlocal(co, &ar, n).as_ref() {
                        // A temporary is not a variable: an expression's value in flight, or
                        // on LuaJIT a stale slot that may hold one of the VM's own objects
                        // (a trace), which the API cannot even type.
                        if is_temporary(CStr::from_ptr(name).to_bytes()) {
                            lua::lua_pop(co, 1);
                        } else {
                            self.check_local(l, co, &ar, n, own);
                        }
                        n += sign;
                    }
                }
            }
            if !own {
                // values not in a Lua frame: a coroutine's body before its first resume, or
                // what it yielded
                for i in 1..=lua::lua_gettop(co) {
                    lua::lua_pushvalue(co, i);
                    lua::lua_xmove(co, l, 1);
                    if self.push_replacement(l) {
                        lua::lua_xmove(l, co, 1);
                        lua::lua_replace(co, i);
                    }
                    lua::lua_pop(l, 1);
                }
            }
            self.visit_env(l, idx);
        }
    }

    /// The local `n` of frame `ar` of thread `co` was just pushed onto `co`.
    unsafe fn check_local(
        &mut self,
        l: *mut lua_State,
        co: *mut lua_State,
        ar: &lua::lua_Debug,
        n: c_int,
        own: bool,
    ) {
        // SAFETY: the value moves to `l` to be examined; a replacement moves back to `co`,
        // where lua_setlocal pops it.
        unsafe {
            if !own {
                lua::lua_xmove(co, l, 1);
            }
            if self.push_replacement(l) {
                if !own {
                    lua::lua_xmove(l, co, 1);
                }
                lua::lua_setlocal(co, ar, n);
            }
            lua::lua_pop(l, 1);
        }
    }
}
