//! The base of the three-way merge: a Rust-side mirror of one module version as it was when
//! freshly loaded (data by key path, upvalue values by function path and name), and the rule
//! that decides, for one data slot, whether the running value or the new source's value wins.
//!
//! The mirror holds no Lua references, so it never keeps an old version alive (rule 11). It
//! is flat (one entry vector, one byte arena) because a reload builds a new one of every
//! table and function of the module. A table's entries are recorded in the order the VM
//! traversed it, and the next version, built by the same code, is traversed in the same
//! order: lookups try the entry after the last one found ([`Cursor`]) and fall back to a hash
//! index, built on the first miss.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::os::raw::c_int;

use mlua::ffi as lua;

use super::ptrmap::PtrHasher;
use crate::vm::access::{self, Val};
use crate::vm::capi;
use crate::vm::registry::{FUNCTIONS, key};

pub type NodeId = u32;

/// What a slot held in the freshly loaded version (strings borrowed from the mirror or from
/// the Lua stack).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Was<'a> {
    #[default]
    Nil,
    Bool(bool),
    Int(i64),
    /// A float, by its bits: an unchanged `0/0` constant is unchanged.
    Num(u64),
    Str(&'a [u8]),
    Light(usize),
    /// A 64-bit integer cdata (LuaJIT), by ctype and bits: `1LL` -> `2LL` is an edit.
    Cdata(u16, u64),
    /// A table or Lua function of the module, mirrored in that node.
    Node(NodeId),
    /// A value with identity but no content to compare: userdata, a coroutine, a C function,
    /// or a table that belongs to someone else (`_G`, another module).
    Opaque,
}

impl<'a> Was<'a> {
    /// The base of a value the merge does not walk into.
    pub fn of(v: Val<'a>) -> Was<'a> {
        match v {
            Val::Nil => Was::Nil,
            Val::Bool(b) => Was::Bool(b),
            Val::Int(i) => Was::Int(i),
            Val::Num(n) => Was::Num(n.to_bits()),
            Val::Str(s) => Was::Str(s),
            Val::Light(p) => Was::Light(p),
            Val::Cdata(_, Some((ctype, bits))) => Was::Cdata(ctype, bits),
            Val::Table(_)
            | Val::LuaFn(_)
            | Val::CFn(_)
            | Val::Userdata(_)
            | Val::Thread(_)
            | Val::Cdata(_, None) => Was::Opaque,
        }
    }

    /// Did the source leave this slot as it was? Tables and functions never compare equal
    /// here: the merge walks into them instead.
    fn unchanged(self, new: Val) -> bool {
        match (self, new) {
            (Was::Nil, Val::Nil) => true,
            (Was::Bool(a), Val::Bool(b)) => a == b,
            (Was::Int(a), Val::Int(b)) => a == b,
            (Was::Num(a), Val::Num(b)) => a == b.to_bits(),
            (Was::Str(a), Val::Str(b)) => a == b,
            (Was::Light(a), Val::Light(b)) => a == b,
            (Was::Cdata(t, a), Val::Cdata(_, Some((u, b)))) => t == u && a == b,
            // Each load makes a fresh userdata, coroutine or cdata: if the source made one
            // at this slot before too, it is the same declaration and the running one is
            // the state.
            (Was::Opaque, Val::Userdata(_) | Val::Thread(_) | Val::Cdata(_, None)) => true,
            _ => false,
        }
    }
}

/// A key the mirror can address across versions: anything but tables and functions, whose
/// identity changes with every load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Bool(bool),
    Int(i64),
    Num(u64),
    Light(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyRef<'a> {
    Str(&'a [u8]),
    Other(Key),
}

impl<'a> KeyRef<'a> {
    /// `None` for keys that are objects (tables, functions, userdata, coroutines).
    pub fn of(v: Val<'a>) -> Option<KeyRef<'a>> {
        Some(match v {
            Val::Str(s) => KeyRef::Str(s),
            Val::Bool(b) => KeyRef::Other(Key::Bool(b)),
            Val::Int(i) => KeyRef::Other(Key::Int(i)),
            Val::Num(n) => KeyRef::Other(Key::Num(n.to_bits())),
            Val::Light(p) => KeyRef::Other(Key::Light(p)),
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// Reached but not walked (a value shared with the running version): no information.
    #[default]
    Unvisited,
    Table,
    Func,
}

/// What the base knows about one slot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Prior<'a> {
    /// No base for this slot (module loaded before hotreload, or a key that is an object).
    Unknown,
    /// The base has the container but not this slot: the new source added it.
    Absent,
    Was(Was<'a>),
}

/// Whether a data slot keeps the running value or takes the new source's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    TakeNew,
}

/// Rule 5, for one data slot: if the source changed the value (base differs from new), the
/// new value applies; if not, the running value is state and stays. Without a base, running
/// values stay and only slots the program never filled take the new value.
pub fn decide(prior: Prior, live: Val, new: Val) -> Decision {
    let keep = match prior {
        Prior::Unknown => live != Val::Nil,
        Prior::Absent => new == Val::Nil,
        Prior::Was(_) => kept_by_source(prior, new),
    };
    if keep { Decision::Keep } else { Decision::TakeNew }
}

/// The part of [`decide`] that needs no running value: the base has the slot and the source
/// left it as it was, so whatever runs there now stays. The merge then never reads the
/// running value (most slots of a reload: the data nobody edited).
pub fn kept_by_source(prior: Prior, new: Val) -> bool {
    matches!(prior, Prior::Was(base) if base.unchanged(new))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    off: u32,
    len: u32,
}

/// `Was` as stored: strings live in the arena.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum Stored {
    #[default]
    Nil,
    Bool(bool),
    Int(i64),
    Num(u64),
    Str(Span),
    Light(usize),
    Cdata(u16, u64),
    Node(NodeId),
    Opaque,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum EKey {
    Str(Span),
    Other(Key),
    Meta,
    Up(Span),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    node: NodeId,
    key: EKey,
    base: Stored,
}

#[derive(Clone, Copy, Debug, Default)]
struct NodeRec {
    kind: Kind,
    /// The node's entries are `entries[start..end]` (a node is mirrored in one go).
    start: u32,
    end: u32,
    fields: u32,
}

const NONE: u32 = u32::MAX;

/// Key hash -> last entry with that hash, and for each entry the previous one with its hash.
#[derive(Debug, Default)]
struct Index {
    last: HashMap<u64, u32, BuildHasherDefault<PtrHasher>>,
    prev: Vec<u32>,
}

/// Where the next lookup in one base table starts: just after the last entry found.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cursor(u32);

/// The mirror of one loaded version of a module.
#[derive(Debug, Default)]
pub struct Snapshot {
    nodes: Vec<NodeRec>,
    entries: Vec<Entry>,
    /// Field keys by hash, built on the first lookup the cursor misses.
    index: OnceCell<Index>,
    bytes: Vec<u8>,
    upvalues: usize,
    root: Stored,
    /// The globals its top level assigned.
    pub globals: Option<NodeId>,
}

/// FxHash-style mixing of a node id and a field key.
fn key_hash(node: NodeId, key: KeyRef) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let mut h = mix(0, u64::from(node));
    match key {
        KeyRef::Str(s) => {
            let mut chunks = s.chunks_exact(8);
            for c in &mut chunks {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                h = mix(h, u64::from_le_bytes(w));
            }
            for &b in chunks.remainder() {
                h = mix(h, u64::from(b));
            }
            mix(h, s.len() as u64)
        }
        KeyRef::Other(Key::Bool(b)) => mix(mix(h, 1), u64::from(b)),
        KeyRef::Other(Key::Int(i)) => mix(mix(h, 2), i as u64),
        KeyRef::Other(Key::Num(n)) => mix(mix(h, 3), n),
        KeyRef::Other(Key::Light(p)) => mix(mix(h, 4), p as u64),
    }
}

impl Snapshot {
    fn bytes(&self, s: Span) -> &[u8] {
        self.bytes.get(s.off as usize..(s.off as usize + s.len as usize)).unwrap_or_default()
    }

    fn view(&self, b: Stored) -> Was<'_> {
        match b {
            Stored::Nil => Was::Nil,
            Stored::Bool(b) => Was::Bool(b),
            Stored::Int(i) => Was::Int(i),
            Stored::Num(n) => Was::Num(n),
            Stored::Str(s) => Was::Str(self.bytes(s)),
            Stored::Light(p) => Was::Light(p),
            Stored::Cdata(t, b) => Was::Cdata(t, b),
            Stored::Node(n) => Was::Node(n),
            Stored::Opaque => Was::Opaque,
        }
    }

    fn node(&self, id: Option<NodeId>, kind: Kind) -> Option<&NodeRec> {
        self.nodes.get(id? as usize).filter(|n| n.kind == kind && kind != Kind::Unvisited)
    }

    fn range(&self, n: &NodeRec) -> &[Entry] {
        self.entries.get(n.start as usize..n.end as usize).unwrap_or_default()
    }

    /// The key path of each table and function reachable from the module's value through
    /// fields (`"Player.draw"`, `"list[3]"`; the module itself is `""`), for naming what a
    /// reload changed. Metatables and upvalues are not followed.
    pub fn paths(&self) -> HashMap<NodeId, String> {
        let mut paths: HashMap<NodeId, String> = HashMap::new();
        let Stored::Node(root) = self.root else { return paths };
        paths.insert(root, String::new());
        let mut queue = std::collections::VecDeque::from([root]);
        while let Some(id) = queue.pop_front() {
            let Some(rec) = self.nodes.get(id as usize) else { continue };
            let parent = paths.get(&id).cloned().unwrap_or_default();
            for e in self.range(rec) {
                let Stored::Node(child) = e.base else { continue };
                if paths.contains_key(&child) {
                    continue;
                }
                let Some(key) = self.key_text(e.key) else { continue };
                paths.insert(child, join_path(&parent, &key));
                queue.push_back(child);
            }
        }
        paths
    }

    /// A field key as a path step: a name, or `[n]`; `None` for metatables and upvalues.
    fn key_text(&self, key: EKey) -> Option<String> {
        match key {
            EKey::Str(s) => Some(String::from_utf8_lossy(self.bytes(s)).into_owned()),
            EKey::Other(k) => Some(key_step(KeyRef::Other(k))),
            EKey::Meta | EKey::Up(_) => None,
        }
    }

    /// The base of the module value itself.
    pub fn root(&self) -> Prior<'_> {
        Prior::Was(self.view(self.root))
    }

    /// Numbers of walked tables and functions, of entries and of upvalues (capacity hints
    /// for the next reload).
    pub fn size(&self) -> (usize, usize, usize) {
        (self.nodes.len(), self.entries.len(), self.upvalues)
    }

    /// The node a slot's base points to, if it is a walked object of this kind.
    pub fn child(&self, prior: Prior, kind: Kind) -> Option<NodeId> {
        match prior {
            Prior::Was(Was::Node(id)) => self.node(Some(id), kind).map(|_| id),
            _ => None,
        }
    }

    /// A cursor at the first entry of `table`.
    pub fn cursor(&self, table: Option<NodeId>) -> Cursor {
        Cursor(self.node(table, Kind::Table).map_or(NONE, |n| n.start))
    }

    /// The base of `table[key]`. `cur`, from [`Snapshot::cursor`] for the same table, moves to
    /// the entry after the one found.
    pub fn field(&self, table: Option<NodeId>, key: KeyRef, cur: &mut Cursor) -> Prior<'_> {
        let Some(id) = table.filter(|_| self.node(table, Kind::Table).is_some()) else {
            return Prior::Unknown;
        };
        let same = |e: &Entry| {
            e.node == id
                && match (e.key, key) {
                    (EKey::Str(s), KeyRef::Str(k)) => self.bytes(s) == k,
                    (EKey::Other(a), KeyRef::Other(b)) => a == b,
                    _ => false,
                }
        };
        let mut at = cur.0;
        if !self.entries.get(at as usize).is_some_and(same) {
            let index = self.index.get_or_init(|| self.build_index());
            at = index.last.get(&key_hash(id, key)).copied().unwrap_or(NONE);
            while let Some(e) = self.entries.get(at as usize) {
                if same(e) {
                    break;
                }
                at = index.prev.get(at as usize).copied().unwrap_or(NONE);
            }
        }
        match self.entries.get(at as usize) {
            Some(e) => {
                cur.0 = at + 1;
                Prior::Was(self.view(e.base))
            }
            None => Prior::Absent,
        }
    }

    fn build_index(&self) -> Index {
        let mut index = Index::default();
        index.last.reserve(self.entries.len());
        index.prev.reserve(self.entries.len());
        for (at, e) in self.entries.iter().enumerate() {
            let key = match e.key {
                EKey::Str(s) => KeyRef::Str(self.bytes(s)),
                EKey::Other(k) => KeyRef::Other(k),
                EKey::Meta | EKey::Up(_) => {
                    index.prev.push(NONE);
                    continue;
                }
            };
            let prev = index.last.insert(key_hash(e.node, key), at as u32);
            index.prev.push(prev.unwrap_or(NONE));
        }
        index
    }

    pub fn meta(&self, table: Option<NodeId>) -> Prior<'_> {
        let Some(n) = self.node(table, Kind::Table) else { return Prior::Unknown };
        let found = self.range(n).iter().rev().find(|e| e.key == EKey::Meta);
        found.map_or(Prior::Absent, |e| Prior::Was(self.view(e.base)))
    }

    /// The base of the upvalue called `name` (a function has at most one per name; unnamed
    /// upvalues of stripped functions are never matched), looked for first at position
    /// `hint` (1-based, as upvalue indices: versions usually keep the order).
    pub fn upvalue(&self, func: Option<NodeId>, name: &[u8], hint: usize) -> Prior<'_> {
        let Some(n) = self.node(func, Kind::Func) else { return Prior::Unknown };
        if name.is_empty() {
            return Prior::Unknown;
        }
        let range = self.range(n);
        let named = |e: &&Entry| matches!(e.key, EKey::Up(s) if self.bytes(s) == name);
        let found = range.get(hint.wrapping_sub(1)).filter(named);
        let found = found.or_else(|| range.iter().find(named));
        found.map_or(Prior::Absent, |e| Prior::Was(self.view(e.base)))
    }

    /// Whether a base table had nothing to merge: no entries and no metatable (or no base).
    pub fn is_bare(&self, table: Option<NodeId>) -> bool {
        self.node(table, Kind::Table).is_none_or(|n| n.start == n.end)
    }

    /// Number of addressable keys the base table had.
    pub fn len(&self, table: Option<NodeId>) -> usize {
        self.node(table, Kind::Table).map_or(0, |n| n.fields as usize)
    }

    /// Keys of a base table (for finding the ones the new source deleted).
    pub fn keys(&self, table: Option<NodeId>) -> impl Iterator<Item = KeyRef<'_>> {
        let entries = self.node(table, Kind::Table).map_or(&[][..], |n| self.range(n));
        entries.iter().filter_map(|e| match e.key {
            EKey::Str(s) => Some(KeyRef::Str(self.bytes(s))),
            EKey::Other(k) => Some(KeyRef::Other(k)),
            _ => None,
        })
    }
}

/// Builds the mirror of a new version while the merge walks it. Each node must be filled in
/// one go, between `begin` and the next `begin`.
#[derive(Default)]
pub struct Builder {
    s: Snapshot,
}

impl Builder {
    /// A builder sized like `like` (the previous version: the new one is usually similar).
    pub fn sized_like(like: &Snapshot) -> Builder {
        let mut s = Snapshot::default();
        s.nodes.reserve(like.nodes.len());
        s.entries.reserve(like.entries.len());
        s.bytes.reserve(like.bytes.len());
        Builder { s }
    }

    pub fn new_node(&mut self) -> NodeId {
        self.s.nodes.push(NodeRec::default());
        (self.s.nodes.len() - 1) as NodeId
    }

    pub fn begin(&mut self, id: NodeId, kind: Kind) {
        let at = self.s.entries.len() as u32;
        if let Some(n) = self.s.nodes.get_mut(id as usize) {
            *n = NodeRec { kind, start: at, end: at, fields: 0 };
        }
    }

    fn span(&mut self, b: &[u8]) -> Span {
        let off = self.s.bytes.len() as u32;
        self.s.bytes.extend_from_slice(b);
        Span { off, len: b.len() as u32 }
    }

    fn store(&mut self, w: Was) -> Stored {
        match w {
            Was::Nil => Stored::Nil,
            Was::Bool(b) => Stored::Bool(b),
            Was::Int(i) => Stored::Int(i),
            Was::Num(n) => Stored::Num(n),
            Was::Str(s) => Stored::Str(self.span(s)),
            Was::Light(p) => Stored::Light(p),
            Was::Cdata(t, b) => Stored::Cdata(t, b),
            Was::Node(n) => Stored::Node(n),
            Was::Opaque => Stored::Opaque,
        }
    }

    fn push(&mut self, id: NodeId, key: EKey, base: Stored) {
        let at = self.s.entries.len() as u32;
        let Some(n) = self.s.nodes.get_mut(id as usize) else { return };
        if n.end != at {
            // Not filled in one go: forget the node rather than give a wrong base.
            n.kind = Kind::Unvisited;
            return;
        }
        n.end = at + 1;
        n.fields += u32::from(matches!(key, EKey::Str(_) | EKey::Other(_)));
        self.s.entries.push(Entry { node: id, key, base });
    }

    pub fn field(&mut self, id: NodeId, key: KeyRef, w: Was) {
        let ekey = match key {
            KeyRef::Str(s) => EKey::Str(self.span(s)),
            KeyRef::Other(k) => EKey::Other(k),
        };
        let base = self.store(w);
        self.push(id, ekey, base);
    }

    pub fn meta(&mut self, id: NodeId, w: Was) {
        let base = self.store(w);
        self.push(id, EKey::Meta, base);
    }

    pub fn upvalue(&mut self, id: NodeId, name: &[u8], w: Was) {
        let (name, base) = (self.span(name), self.store(w));
        self.push(id, EKey::Up(name), base);
        self.s.upvalues += 1;
    }

    /// Records the base of the module value itself.
    pub fn set_root(&mut self, root: Was) {
        self.s.root = self.store(root);
    }

    pub fn finish(mut self, globals: Option<NodeId>) -> Snapshot {
        self.s.globals = globals;
        self.s
    }
}

/// A key as a path step: a string as it is, anything else in brackets (`[3]`, `[true]`).
pub fn key_step(key: KeyRef) -> String {
    match key {
        KeyRef::Str(s) => String::from_utf8_lossy(s).into_owned(),
        KeyRef::Other(Key::Int(i)) => format!("[{i}]"),
        KeyRef::Other(Key::Num(n)) => format!("[{}]", f64::from_bits(n)),
        KeyRef::Other(Key::Bool(b)) => format!("[{b}]"),
        KeyRef::Other(Key::Light(p)) => format!("[{p:#x}]"),
    }
}

/// `parent.step` (`parent[3]` for a bracketed step; the step alone at the root).
pub fn join_path(parent: &str, step: &str) -> String {
    match (parent.is_empty(), step.starts_with('[')) {
        (true, _) => step.to_owned(),
        (false, true) => format!("{parent}{step}"),
        (false, false) => format!("{parent}.{step}"),
    }
}

/// The mirror holds no Lua values, but the three-way merge of code (rule 2) must tell the
/// function the previous version put at a slot from one the program put there since (a
/// mock, a patch): by identity, which an address alone cannot prove once the function may
/// have been collected. So the functions of each module's base are kept in the registry,
/// by mirror node (`node + 1`): those of the version running now, never an older one, and
/// replaced by the next version's at each reload (rule 11 holds). Pushes the table of
/// module `name`, or nil; returns whether it is a table.
///
/// # Safety
/// Three free stack slots.
pub unsafe fn push_functions(l: *mut lua::lua_State, name: &[u8]) -> bool {
    // SAFETY: raw reads of the registry.
    unsafe {
        lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&FUNCTIONS));
        if lua::lua_type(l, -1) != lua::LUA_TTABLE {
            return false;
        }
        capi::push_bytes(l, name);
        lua::lua_rawget(l, -2);
        lua::lua_remove(l, -2);
        lua::lua_type(l, -1) == lua::LUA_TTABLE
    }
}

/// Makes the table at `idx` (from `Plan::functions`) the base functions of module `name`.
///
/// # Safety
/// Inside a protected call (allocates); three free stack slots.
pub unsafe fn set_functions(l: *mut lua::lua_State, name: &[u8], idx: c_int) {
    // SAFETY: raw reads and writes of the registry and of our own table.
    unsafe {
        let idx = lua::lua_absindex(l, idx);
        lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&FUNCTIONS));
        if lua::lua_type(l, -1) != lua::LUA_TTABLE {
            lua::lua_pop(l, 1);
            lua::lua_createtable(l, 0, 8);
            lua::lua_pushvalue(l, -1);
            lua::lua_rawsetp(l, lua::LUA_REGISTRYINDEX, key(&FUNCTIONS));
        }
        capi::push_bytes(l, name);
        lua::lua_pushvalue(l, idx);
        lua::lua_rawset(l, -3);
        lua::lua_pop(l, 1);
    }
}

/// How many modules' base functions each batch checks (`prune_functions`).
pub const PRUNE_PER_BATCH: usize = 8;

/// Forgets the base functions of modules the program dropped (`package.loaded[name]` is nil
/// now), so that a dropped module's code is collectable (rule 11) and the heap the collector
/// and the walk go through holds only live modules. Checks at most `n` modules, resuming
/// after `cursor` (the last module the previous call checked and kept; updated), so that a
/// batch costs the same however many modules are loaded: a dropped module is forgotten within
/// (number of modules ÷ `n`) batches. Returns the names forgotten.
///
/// # Safety
/// Inside a protected call; `loaded` is `package.loaded` (absolute); four free stack slots.
pub unsafe fn prune_functions(
    l: *mut lua::lua_State,
    loaded: c_int,
    cursor: &mut Option<Box<[u8]>>,
    n: usize,
) -> Vec<Box<[u8]>> {
    let mut dropped = Vec::new();
    // SAFETY: raw reads of our own table and of `package.loaded`; `lua_next` resumes from a
    // key still in the table (nothing is removed before the traversal ends, and the cursor
    // is a key the traversal did not remove).
    unsafe {
        if lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&FUNCTIONS)) != lua::LUA_TTABLE {
            lua::lua_pop(l, 1);
            *cursor = None;
            return dropped;
        }
        let functions = lua::lua_gettop(l);
        // resumed after the last module kept (a forgotten one's key cannot be resumed from)
        let mut resume = cursor.take().filter(|name| {
            capi::push_bytes(l, name);
            let kept = lua::lua_rawget(l, functions) != lua::LUA_TNIL;
            lua::lua_pop(l, 1);
            kept
        });
        match &resume {
            Some(name) => capi::push_bytes(l, name),
            None => lua::lua_pushnil(l),
        }
        let mut checked = 0;
        loop {
            if checked == n {
                lua::lua_pop(l, 1);
                *cursor = resume;
                break;
            }
            if lua::lua_next(l, functions) == 0 {
                break; // every module checked: the next call starts over
            }
            lua::lua_pop(l, 1);
            let Val::Str(name) = access::read(l, -1) else { continue };
            checked += 1;
            lua::lua_pushvalue(l, -1);
            if lua::lua_rawget(l, loaded) == lua::LUA_TNIL {
                dropped.push(name.into());
            } else {
                resume = Some(name.into());
            }
            lua::lua_pop(l, 1);
        }
        for name in &dropped {
            capi::push_bytes(l, name);
            lua::lua_pushnil(l);
            lua::lua_rawset(l, functions);
        }
        lua::lua_pop(l, 1);
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;

    #[test]
    fn pruning_reaches_every_dropped_module_a_few_at_a_time() {
        let lua = mlua::Lua::new();
        // SAFETY: plain table building; every push is popped or stored.
        unsafe {
            capi::testing::assert_raw(&lua, (), |l, failures| {
                // every module but one in five dropped: whatever the hash order, a pass
                // that skipped some of them would leave dropped ones behind
                let mut dropped_names: Vec<String> =
                    (0..20).filter(|i| i % 5 != 0).map(|i| format!("m{i}")).collect();
                dropped_names.sort();
                lua::lua_createtable(l, 0, 20);
                lua::lua_createtable(l, 0, 20); // package.loaded
                for i in 0..20 {
                    let name = format!("m{i}");
                    capi::push_bytes(l, name.as_bytes());
                    lua::lua_createtable(l, 0, 0);
                    lua::lua_rawset(l, -4);
                    if !dropped_names.contains(&name) {
                        capi::push_bytes(l, name.as_bytes());
                        lua::lua_pushboolean(l, 1);
                        lua::lua_rawset(l, -3);
                    }
                }
                let loaded = lua::lua_gettop(l);
                lua::lua_pushvalue(l, -2);
                lua::lua_rawsetp(l, lua::LUA_REGISTRYINDEX, key(&FUNCTIONS));
                let mut cursor = None;
                let mut forgotten: Vec<String> = Vec::new();
                for _ in 0..6 {
                    for name in prune_functions(l, loaded, &mut cursor, 4) {
                        forgotten.push(String::from_utf8_lossy(&name).into_owned());
                    }
                }
                forgotten.sort();
                if forgotten != dropped_names {
                    failures.push_str(&format!("forgot {forgotten:?} in 6 calls of 4\n"));
                }
                lua::lua_pushnil(l);
                lua::lua_rawsetp(l, lua::LUA_REGISTRYINDEX, key(&FUNCTIONS));
            });
        }
    }

    #[test]
    fn rule5_three_way_table() {
        let cases: &[(Prior, Val, Val, Decision, &str)] = &[
            (Prior::Was(Was::Int(0)), Val::Int(7), Val::Int(0), Keep, "state survives"),
            (Prior::Was(Was::Int(0)), Val::Int(7), Val::Int(5), TakeNew, "edited constant applies"),
            (Prior::Was(Was::Int(10)), Val::Int(10), Val::Int(10), Keep, "unchanged, untouched"),
            (Prior::Was(Was::Int(0)), Val::Int(7), Val::Num(0.0), TakeNew, "0 -> 0.0 is an edit"),
            (
                Prior::Was(Was::Str(b"hero")),
                Val::Str(b"x"),
                Val::Str(b"hero"),
                Keep,
                "string state",
            ),
            (Prior::Was(Was::Str(b"hero")), Val::Str(b"x"), Val::Str(b"vil"), TakeNew, "edit"),
            (Prior::Absent, Val::Nil, Val::Int(1), TakeNew, "new key added"),
            (Prior::Absent, Val::Int(3), Val::Int(1), TakeNew, "added by source too"),
            (Prior::Unknown, Val::Int(3), Val::Int(1), Keep, "no base keeps live"),
            (Prior::Unknown, Val::Nil, Val::Int(1), TakeNew, "no base fills holes"),
            (Prior::Was(Was::Nil), Val::Int(4), Val::Nil, Keep, "nil local kept"),
            (Prior::Was(Was::Opaque), Val::Userdata(1), Val::Userdata(2), Keep, "userdata"),
            (Prior::Was(Was::Opaque), Val::Int(1), Val::Int(1), TakeNew, "kind changed"),
            (Prior::Was(Was::Node(3)), Val::Int(1), Val::Int(1), TakeNew, "table became data"),
        ];
        for (prior, live, new, want, why) in cases {
            assert_eq!(decide(*prior, *live, *new), *want, "{why}");
            if kept_by_source(*prior, *new) {
                assert_eq!(*want, Keep, "kept by the source alone: {why}");
                for other in [Val::Nil, Val::Int(99), Val::Str(b"other"), Val::Table(8)] {
                    assert_eq!(decide(*prior, other, *new), Keep, "whatever runs: {why}");
                }
            }
        }
    }

    #[test]
    fn nan_constant_is_unchanged() {
        let nan = Was::of(Val::Num(f64::NAN));
        assert_eq!(decide(Prior::Was(nan), Val::Num(1.0), Val::Num(f64::NAN)), Keep);
    }

    impl Snapshot {
        /// `field` with a fresh cursor.
        fn find(&self, table: Option<NodeId>, key: KeyRef) -> Prior<'_> {
            self.field(table, key, &mut self.cursor(table))
        }
    }

    fn sample() -> (Snapshot, NodeId, NodeId) {
        let mut b = Builder::default();
        let t = b.new_node();
        let f = b.new_node();
        b.begin(t, Kind::Table);
        b.field(t, KeyRef::Str(b"count"), Was::Int(0));
        b.field(t, KeyRef::Other(Key::Int(1)), Was::Bool(true));
        b.field(t, KeyRef::Str(b"f"), Was::Node(f));
        b.field(t, KeyRef::Str(b"name"), Was::Str(b"hero"));
        b.meta(t, Was::Opaque);
        b.begin(f, Kind::Func);
        b.upvalue(f, b"n", Was::Int(1));
        b.upvalue(f, b"_ENV", Was::Opaque);
        {
            b.set_root(Was::Node(t));
            (b.finish(None), t, f)
        }
    }

    #[test]
    fn mirror_lookups() {
        let (s, t, f) = sample();
        let root = s.child(s.root(), Kind::Table);
        assert_eq!(root, Some(t));
        assert_eq!(s.find(root, KeyRef::Str(b"count")), Prior::Was(Was::Int(0)));
        assert_eq!(s.find(root, KeyRef::Other(Key::Int(1))), Prior::Was(Was::Bool(true)));
        assert_eq!(s.find(root, KeyRef::Str(b"name")), Prior::Was(Was::Str(b"hero")));
        assert_eq!(s.find(root, KeyRef::Str(b"gone")), Prior::Absent);
        assert_eq!(s.find(None, KeyRef::Str(b"count")), Prior::Unknown);
        assert_eq!(s.find(Some(f), KeyRef::Str(b"count")), Prior::Unknown, "kind checked");
        assert_eq!(s.len(root), 4);
        assert_eq!(s.keys(root).count(), 4);
        assert_eq!(s.meta(root), Prior::Was(Was::Opaque));

        let fnode = s.child(s.find(root, KeyRef::Str(b"f")), Kind::Func);
        assert_eq!(fnode, Some(f));
        assert_eq!(s.child(s.find(root, KeyRef::Str(b"f")), Kind::Table), None, "kind checked");
        assert_eq!(s.upvalue(fnode, b"n", 1), Prior::Was(Was::Int(1)));
        assert_eq!(s.upvalue(fnode, b"m", 1), Prior::Absent);
        assert_eq!(s.upvalue(fnode, b"", 1), Prior::Unknown, "unnamed never matches");
        assert_eq!(s.meta(fnode), Prior::Unknown);
    }

    #[test]
    fn many_keys_with_colliding_prefixes() {
        let mut b = Builder::default();
        let t = b.new_node();
        b.begin(t, Kind::Table);
        for i in 0..5000i64 {
            let k = format!("key_with_a_long_common_prefix_{i}");
            b.field(t, KeyRef::Str(k.as_bytes()), Was::Int(i));
            b.field(t, KeyRef::Other(Key::Int(i)), Was::Int(-i));
        }
        b.set_root(Was::Node(t));
        let s = b.finish(None);
        for i in (0..5000i64).step_by(97) {
            let k = format!("key_with_a_long_common_prefix_{i}");
            assert_eq!(s.find(Some(t), KeyRef::Str(k.as_bytes())), Prior::Was(Was::Int(i)));
            assert_eq!(s.find(Some(t), KeyRef::Other(Key::Int(i))), Prior::Was(Was::Int(-i)));
        }
        assert_eq!(s.len(Some(t)), 10000);
    }

    #[test]
    fn cursor_follows_the_recorded_order_and_falls_back_to_the_index() {
        let mut b = Builder::default();
        let t = b.new_node();
        let u = b.new_node();
        b.begin(t, Kind::Table);
        for i in 0..100i64 {
            b.field(t, KeyRef::Other(Key::Int(i)), Was::Int(i * 10));
        }
        b.begin(u, Kind::Table);
        b.field(u, KeyRef::Other(Key::Int(0)), Was::Int(-1));
        let s = b.finish(None);
        let mut cur = s.cursor(Some(t));
        for i in 0..100i64 {
            assert_eq!(
                s.field(Some(t), KeyRef::Other(Key::Int(i)), &mut cur),
                Prior::Was(Was::Int(i * 10))
            );
        }
        assert!(s.index.get().is_none(), "keys in the recorded order need no index");
        // past the end of `t` the next entry is `u`'s key 0: not `t`'s
        assert_eq!(s.field(Some(t), KeyRef::Other(Key::Int(0)), &mut cur), Prior::Was(Was::Int(0)));
        let mut cur = s.cursor(Some(t));
        for i in (0..100i64).rev() {
            assert_eq!(
                s.field(Some(t), KeyRef::Other(Key::Int(i)), &mut cur),
                Prior::Was(Was::Int(i * 10))
            );
        }
        assert_eq!(s.field(Some(t), KeyRef::Other(Key::Int(100)), &mut cur), Prior::Absent);
        assert_eq!(s.find(Some(u), KeyRef::Other(Key::Int(0))), Prior::Was(Was::Int(-1)));
        assert_eq!(s.find(Some(u), KeyRef::Other(Key::Int(1))), Prior::Absent);
    }

    #[test]
    fn upvalues_found_out_of_order() {
        let mut b = Builder::default();
        let f = b.new_node();
        b.begin(f, Kind::Func);
        b.upvalue(f, b"a", Was::Int(1));
        b.upvalue(f, b"b", Was::Int(2));
        let s = b.finish(None);
        assert_eq!(s.upvalue(Some(f), b"b", 2), Prior::Was(Was::Int(2)));
        assert_eq!(s.upvalue(Some(f), b"b", 1), Prior::Was(Was::Int(2)));
        assert_eq!(s.upvalue(Some(f), b"a", 5), Prior::Was(Was::Int(1)));
        assert_eq!(s.upvalue(Some(f), b"c", 1), Prior::Absent);
    }

    #[test]
    fn unvisited_or_interleaved_nodes_give_no_information() {
        let mut b = Builder::default();
        let t = b.new_node();
        let u = b.new_node();
        b.begin(t, Kind::Table);
        b.field(t, KeyRef::Str(b"a"), Was::Int(1));
        b.begin(u, Kind::Table);
        b.field(u, KeyRef::Str(b"b"), Was::Int(2));
        b.field(t, KeyRef::Str(b"late"), Was::Int(3)); // t is no longer the open node
        let v = b.new_node();
        let s = b.finish(None);
        assert_eq!(s.find(Some(t), KeyRef::Str(b"a")), Prior::Unknown);
        assert_eq!(s.find(Some(u), KeyRef::Str(b"b")), Prior::Was(Was::Int(2)));
        assert_eq!(s.find(Some(v), KeyRef::Str(b"x")), Prior::Unknown);
    }

    #[test]
    fn object_keys_are_not_addressable() {
        assert_eq!(KeyRef::of(Val::Table(8)), None);
        assert_eq!(KeyRef::of(Val::LuaFn(8)), None);
        assert_eq!(KeyRef::of(Val::Str(b"k")), Some(KeyRef::Str(b"k")));
    }
}
