//! The table cursor of both VMs: reads a table's slots in place, in `lua_next`'s order (the
//! array part, then the hash nodes), over the small part of a VM's table layout it needs
//! ([`TableLayout`], one implementation in `lua54/tables.rs` and one in `luajit/tables.rs`).
//!
//! It hands over only the entries a caller asks for: the walk wants those that hold an
//! object it must see (`next`), the merge every entry (`next_entry`), and then fetches the
//! objects of the entries a few nodes on into the cache (they are scattered over the heap).
//!
//! What it may do: read slots between two Lua calls that do not resize the table (the walk
//! only assigns to existing keys, like during `lua_next`, with the collector held), and push
//! a slot's value onto a stack with room for it, which is what `lua_next` does itself.

use std::marker::PhantomData;
use std::os::raw::c_int;

use mlua::ffi as lua;

use super::PREFETCH_AHEAD;
use crate::vm::capi::lua_State;

/// What a cursor needs of one VM's table layout.
pub(crate) trait TableLayout {
    /// A key or value as the cursor hands it over: its tag and payload.
    type Value: Copy;
    /// A slot of the array part, and a hash node.
    type ArraySlot;
    type Node;

    /// The array part, its size, the hash nodes and their count of the live table at
    /// `table`.
    ///
    /// # Safety
    /// `table` is the address of a live table; the probe checked the layout.
    unsafe fn parts(table: usize) -> (*const Self::ArraySlot, usize, *const Self::Node, usize);

    /// The key `lua_next` gives the array slot at `index` (from 0).
    fn array_key(index: usize) -> Self::Value;

    /// The value in an array slot, or `None` if the slot is empty.
    ///
    /// # Safety
    /// `slot` is a slot of a live array part.
    unsafe fn array_value(slot: *const Self::ArraySlot) -> Option<Self::Value>;

    /// The key and value of a hash node, or `None` if its value is empty.
    ///
    /// # Safety
    /// `node` is a node of a live table.
    unsafe fn node_entry(node: *const Self::Node) -> Option<(Self::Value, Self::Value)>;

    /// Fetches the objects a node's key and value refer to into the cache: a hint.
    ///
    /// # Safety
    /// `node` is a node of a live table.
    unsafe fn prefetch_node(node: *const Self::Node);

    /// Whether a value is an object the walk must see: a table, a Lua function (or a
    /// closure), a full userdata or a thread.
    fn wanted(v: Self::Value) -> bool;

    /// The address of the table a value is, if it is one.
    fn table(v: Self::Value) -> Option<usize>;

    /// Pushes a value, as `lua_pushvalue` would.
    ///
    /// # Safety
    /// A free stack slot; the value is alive.
    unsafe fn push(l: *mut lua_State, v: Self::Value);
}

/// The slots of one table, read in place, and how far the caller has read.
pub(crate) struct Cursor<L: TableLayout> {
    array: *const L::ArraySlot,
    asize: usize,
    node: *const L::Node,
    nsize: usize,
    at: usize,
    layout: PhantomData<L>,
}

/// A slot the cursor handed over: its key and value.
pub(crate) struct Slot<L: TableLayout> {
    key: L::Value,
    value: L::Value,
}

impl<L: TableLayout> Cursor<L> {
    /// # Safety
    /// `idx` holds a table, and the layout's probe said yes.
    pub(crate) unsafe fn new(l: *mut lua_State, idx: c_int) -> Cursor<L> {
        // SAFETY: a table's `lua_topointer` is its address.
        unsafe { Cursor::of(lua::lua_topointer(l, idx) as usize) }
    }

    /// # Safety
    /// `table` is the address of a live table, and the layout's probe said yes.
    pub(crate) unsafe fn of(table: usize) -> Cursor<L> {
        // SAFETY: forwarded.
        let (array, asize, node, nsize) = unsafe { L::parts(table) };
        Cursor { array, asize, node, nsize, at: 0, layout: PhantomData }
    }

    /// The next slot the walk must see: those that hold plain data (numbers, strings,
    /// booleans, light userdata, light C functions, cdata) on both sides are skipped.
    ///
    /// # Safety
    /// The table has not been resized since the cursor was made.
    #[inline]
    pub(crate) unsafe fn next(&mut self) -> Option<Slot<L>> {
        // SAFETY: forwarded.
        unsafe { self.next_where(false, |key, value| L::wanted(key) || L::wanted(value)) }
    }

    /// The next entry, whatever it holds, as `lua_next` gives it, fetching the objects of
    /// the entries `PREFETCH_AHEAD` nodes on into the cache.
    ///
    /// # Safety
    /// As `next`.
    #[inline(always)]
    pub(crate) unsafe fn next_entry(&mut self) -> Option<Slot<L>> {
        // SAFETY: forwarded.
        unsafe { self.next_where(true, |_, _| true) }
    }

    /// The next slot with a value whose key and value `keep` accepts.
    ///
    /// # Safety
    /// As `next`.
    #[inline(always)]
    unsafe fn next_where(
        &mut self,
        ahead: bool,
        keep: impl Fn(L::Value, L::Value) -> bool,
    ) -> Option<Slot<L>> {
        // SAFETY: `at` stays below the sizes read from the table, which has not changed.
        unsafe {
            let mut at = self.at;
            while at < self.asize {
                let value = L::array_value(self.array.add(at));
                let key = L::array_key(at);
                at += 1;
                if let Some(value) = value
                    && keep(key, value)
                {
                    self.at = at;
                    return Some(Slot { key, value });
                }
            }
            let mut i = at - self.asize;
            while i < self.nsize {
                let n = self.node.add(i);
                i += 1;
                if ahead && i + PREFETCH_AHEAD < self.nsize {
                    L::prefetch_node(self.node.add(i + PREFETCH_AHEAD));
                }
                if let Some((key, value)) = L::node_entry(n)
                    && keep(key, value)
                {
                    self.at = self.asize + i;
                    return Some(Slot { key, value });
                }
            }
            self.at = self.asize + i;
            None
        }
    }
}

impl<L: TableLayout> Slot<L> {
    /// The address of the table this slot holds under a key of plain data: the commonest
    /// kind of slot the walk must see.
    pub(crate) fn table_under_plain_key(&self) -> Option<usize> {
        L::table(self.value).filter(|_| !L::wanted(self.key))
    }

    /// Pushes the key and the value, as `lua_next` does.
    ///
    /// # Safety
    /// Two free stack slots; the table still holds the slot.
    pub(crate) unsafe fn push(&self, l: *mut lua_State) {
        // SAFETY: forwarded; both values are live while the table holds them.
        unsafe {
            L::push(l, self.key);
            L::push(l, self.value);
        }
    }
}
