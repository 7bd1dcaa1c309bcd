//! The base of the three-way merge: a Rust-side mirror of one module version as it was when
//! freshly loaded (data by key path, upvalue values by function path and name), and the rule
//! that decides, for one data slot, whether the running value or the new source's value wins.
//!
//! The mirror holds no Lua references, so it never keeps an old version alive (rule 11).

use std::collections::HashMap;

use crate::ffi::Val;
use crate::ptrmap::PtrMap;

pub type NodeId = u32;

/// What a slot held in the freshly loaded version.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Base {
    #[default]
    Nil,
    Bool(bool),
    Int(i64),
    /// A float, by its bits: an unchanged `0/0` constant is unchanged.
    Num(u64),
    Str(Box<[u8]>),
    Light(usize),
    /// A table or Lua function of the module, mirrored in that node.
    Node(NodeId),
    /// A value with identity but no content to compare: userdata, a coroutine, a C function,
    /// or a table that belongs to someone else (`_G`, another module).
    Opaque,
}

impl Base {
    /// The base of a value that the merge does not walk into.
    pub fn of(v: Val) -> Base {
        match v {
            Val::Nil => Base::Nil,
            Val::Bool(b) => Base::Bool(b),
            Val::Int(i) => Base::Int(i),
            Val::Num(n) => Base::Num(n.to_bits()),
            Val::Str(s) => Base::Str(s.into()),
            Val::Light(p) => Base::Light(p),
            Val::Table(_) | Val::LuaFn(_) | Val::CFn(_) | Val::Userdata(_) | Val::Thread(_) => {
                Base::Opaque
            }
        }
    }

    /// Did the source leave this slot as it was? Tables and functions never compare equal
    /// here: the merge walks into them instead.
    fn unchanged(&self, new: Val) -> bool {
        match (self, new) {
            (Base::Nil, Val::Nil) => true,
            (Base::Bool(a), Val::Bool(b)) => *a == b,
            (Base::Int(a), Val::Int(b)) => *a == b,
            (Base::Num(a), Val::Num(b)) => *a == b.to_bits(),
            (Base::Str(a), Val::Str(b)) => **a == *b,
            (Base::Light(a), Val::Light(b)) => *a == b,
            // Each load makes a fresh userdata or coroutine: if the source made one at this
            // slot before too, it is the same declaration and the running one is the state.
            (Base::Opaque, Val::Userdata(_) | Val::Thread(_)) => true,
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

#[derive(Debug, Default)]
struct Node {
    kind: Kind,
    strs: HashMap<Box<[u8]>, Base>,
    others: HashMap<Key, Base>,
    meta: Option<Base>,
    upvals: Vec<(Box<[u8]>, Base)>,
}

/// What the base knows about one slot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Prior<'a> {
    /// No base for this slot (module loaded before hotreload, or a key that is an object).
    Unknown,
    /// The base has the container but not this slot: the new source added it.
    Absent,
    Was(&'a Base),
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
        Prior::Was(base) => base.unchanged(new),
    };
    if keep { Decision::Keep } else { Decision::TakeNew }
}

/// The mirror of one loaded version of a module.
#[derive(Debug, Default)]
pub struct Snapshot {
    nodes: Vec<Node>,
    /// The module value itself (`package.loaded[name]`).
    pub root: Base,
    /// The globals its top level assigned.
    pub globals: Option<NodeId>,
}

impl Snapshot {
    fn node(&self, id: NodeId, kind: Kind) -> Option<&Node> {
        self.nodes.get(id as usize).filter(|n| n.kind == kind && kind != Kind::Unvisited)
    }

    /// The node a slot's base points to, if it is a walked object of this kind.
    pub fn child(&self, prior: Prior, kind: Kind) -> Option<NodeId> {
        match prior {
            Prior::Was(Base::Node(id)) => self.node(*id, kind).map(|_| *id),
            _ => None,
        }
    }

    pub fn field(&self, table: Option<NodeId>, key: KeyRef) -> Prior<'_> {
        let Some(n) = table.and_then(|t| self.node(t, Kind::Table)) else {
            return Prior::Unknown;
        };
        let found = match key {
            KeyRef::Str(s) => n.strs.get(s),
            KeyRef::Other(k) => n.others.get(&k),
        };
        found.map_or(Prior::Absent, Prior::Was)
    }

    pub fn meta(&self, table: Option<NodeId>) -> Prior<'_> {
        match table.and_then(|t| self.node(t, Kind::Table)) {
            None => Prior::Unknown,
            Some(n) => n.meta.as_ref().map_or(Prior::Absent, Prior::Was),
        }
    }

    /// The base of the `occurrence`-th upvalue called `name` (names repeat only in odd code;
    /// unnamed upvalues of stripped functions are never matched).
    pub fn upvalue(&self, func: Option<NodeId>, name: &[u8], occurrence: usize) -> Prior<'_> {
        let Some(n) = func.and_then(|f| self.node(f, Kind::Func)) else {
            return Prior::Unknown;
        };
        if name.is_empty() {
            return Prior::Unknown;
        }
        n.upvals
            .iter()
            .filter(|(k, _)| **k == *name)
            .nth(occurrence)
            .map_or(Prior::Absent, |(_, b)| Prior::Was(b))
    }

    /// Number of addressable keys the base table had.
    pub fn len(&self, table: Option<NodeId>) -> usize {
        table.and_then(|t| self.node(t, Kind::Table)).map_or(0, |n| n.strs.len() + n.others.len())
    }

    /// Keys of a base table (for finding the ones the new source deleted).
    pub fn keys(&self, table: Option<NodeId>) -> impl Iterator<Item = KeyRef<'_>> {
        let n = table.and_then(|t| self.node(t, Kind::Table));
        let strs = n.into_iter().flat_map(|n| n.strs.keys().map(|k| KeyRef::Str(k)));
        let others = n.into_iter().flat_map(|n| n.others.keys().map(|k| KeyRef::Other(*k)));
        strs.chain(others)
    }
}

/// Builds the mirror of a new version while the merge walks it.
#[derive(Default)]
pub struct Builder {
    nodes: Vec<Node>,
    memo: PtrMap<NodeId>,
}

impl Builder {
    /// The node for the object at address `ptr`, created on first use.
    pub fn node_for(&mut self, ptr: usize) -> NodeId {
        if let Some(id) = self.memo.get(&ptr) {
            return *id;
        }
        let id = self.nodes.len() as NodeId;
        self.nodes.push(Node::default());
        self.memo.insert(ptr, id);
        id
    }

    /// The base to record for a value: a node for objects the merge walks, else its data.
    pub fn base_of(&mut self, v: Val) -> Base {
        match v.object() {
            Some(p) => Base::Node(self.node_for(p)),
            None => Base::of(v),
        }
    }

    fn get(&mut self, id: NodeId) -> Option<&mut Node> {
        self.nodes.get_mut(id as usize)
    }

    pub fn set_kind(&mut self, id: NodeId, kind: Kind) {
        if let Some(n) = self.get(id) {
            n.kind = kind;
        }
    }

    pub fn field(&mut self, id: NodeId, key: KeyRef, b: Base) {
        if let Some(n) = self.get(id) {
            match key {
                KeyRef::Str(s) => n.strs.insert(s.into(), b),
                KeyRef::Other(k) => n.others.insert(k, b),
            };
        }
    }

    pub fn meta(&mut self, id: NodeId, b: Base) {
        if let Some(n) = self.get(id) {
            n.meta = Some(b);
        }
    }

    pub fn upvalue(&mut self, id: NodeId, name: &[u8], b: Base) {
        if let Some(n) = self.get(id) {
            n.upvals.push((name.into(), b));
        }
    }

    pub fn finish(self, root: Base, globals: Option<NodeId>) -> Snapshot {
        Snapshot { nodes: self.nodes, root, globals }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;

    #[test]
    fn rule5_three_way_table() {
        let zero = Base::Int(0);
        let ten = Base::Int(10);
        let name = Base::Str(b"hero".as_slice().into());
        let cases: &[(Prior, Val, Val, Decision, &str)] = &[
            (Prior::Was(&zero), Val::Int(7), Val::Int(0), Keep, "state survives"),
            (Prior::Was(&zero), Val::Int(7), Val::Int(5), TakeNew, "edited constant applies"),
            (Prior::Was(&ten), Val::Int(10), Val::Int(10), Keep, "unchanged, untouched"),
            (Prior::Was(&zero), Val::Int(7), Val::Num(0.0), TakeNew, "0 -> 0.0 is an edit"),
            (Prior::Was(&name), Val::Str(b"x"), Val::Str(b"hero"), Keep, "string state"),
            (Prior::Was(&name), Val::Str(b"x"), Val::Str(b"villain"), TakeNew, "string edit"),
            (Prior::Absent, Val::Nil, Val::Int(1), TakeNew, "new key added"),
            (Prior::Absent, Val::Int(3), Val::Int(1), TakeNew, "added by source too"),
            (Prior::Unknown, Val::Int(3), Val::Int(1), Keep, "no base keeps live"),
            (Prior::Unknown, Val::Nil, Val::Int(1), TakeNew, "no base fills holes"),
            (Prior::Was(&Base::Nil), Val::Int(4), Val::Nil, Keep, "nil local kept"),
            (Prior::Was(&Base::Opaque), Val::Userdata(1), Val::Userdata(2), Keep, "userdata"),
            (Prior::Was(&Base::Opaque), Val::Int(1), Val::Int(1), TakeNew, "kind changed"),
        ];
        for (prior, live, new, want, why) in cases {
            assert_eq!(decide(*prior, *live, *new), *want, "{why}");
        }
    }

    #[test]
    fn nan_constant_is_unchanged() {
        let nan = Base::of(Val::Num(f64::NAN));
        assert_eq!(decide(Prior::Was(&nan), Val::Num(1.0), Val::Num(f64::NAN)), Keep);
    }

    #[test]
    fn mirror_lookups() {
        let mut b = Builder::default();
        let t = b.node_for(0x1000);
        let f = b.node_for(0x2000);
        assert_eq!(b.node_for(0x1000), t, "memoised by address");
        b.set_kind(t, Kind::Table);
        b.set_kind(f, Kind::Func);
        b.field(t, KeyRef::Str(b"count"), Base::Int(0));
        b.field(t, KeyRef::Other(Key::Int(1)), Base::Bool(true));
        b.field(t, KeyRef::Str(b"f"), Base::Node(f));
        b.upvalue(f, b"n", Base::Int(1));
        b.upvalue(f, b"n", Base::Int(2));
        let s = b.finish(Base::Node(t), None);

        let root = s.child(Prior::Was(&s.root), Kind::Table);
        assert_eq!(root, Some(t));
        assert_eq!(s.field(root, KeyRef::Str(b"count")), Prior::Was(&Base::Int(0)));
        assert_eq!(s.field(root, KeyRef::Other(Key::Int(1))), Prior::Was(&Base::Bool(true)));
        assert_eq!(s.field(root, KeyRef::Str(b"gone")), Prior::Absent);
        assert_eq!(s.field(None, KeyRef::Str(b"count")), Prior::Unknown);
        assert_eq!(s.len(root), 3);
        assert_eq!(s.keys(root).count(), 3);
        assert_eq!(s.meta(root), Prior::Absent);

        let fnode = s.child(s.field(root, KeyRef::Str(b"f")), Kind::Func);
        assert_eq!(fnode, Some(f));
        assert_eq!(s.child(s.field(root, KeyRef::Str(b"f")), Kind::Table), None, "kind checked");
        assert_eq!(s.upvalue(fnode, b"n", 1), Prior::Was(&Base::Int(2)), "second same-named");
        assert_eq!(s.upvalue(fnode, b"m", 0), Prior::Absent);
        assert_eq!(s.upvalue(fnode, b"", 0), Prior::Unknown, "unnamed never matches");
    }

    #[test]
    fn unvisited_nodes_give_no_information() {
        let mut b = Builder::default();
        let t = b.node_for(1);
        let s = b.finish(Base::Node(t), None);
        assert_eq!(s.field(Some(t), KeyRef::Str(b"x")), Prior::Unknown);
        assert_eq!(s.child(Prior::Was(&s.root), Kind::Table), None);
    }

    #[test]
    fn object_keys_are_not_addressable() {
        assert_eq!(KeyRef::of(Val::Table(8)), None);
        assert_eq!(KeyRef::of(Val::LuaFn(8)), None);
        assert_eq!(KeyRef::of(Val::Str(b"k")), Some(KeyRef::Str(b"k")));
    }
}
