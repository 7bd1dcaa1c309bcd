//! LuaJIT only: the VM walk reads a table's slots in place instead of calling `lua_next`
//! once per entry, and hands over (pushes) only the entries that hold an object the walk
//! must see — a table, a function, a full userdata or a thread. The same job as `rawtable`
//! does on Lua 5.4, with LuaJIT's layout.
//!
//! Why: `lua_next` finds its key again and copies key and value to the stack for every
//! entry, and the walk's type checks called the API twice more; most slots hold plain data.
//!
//! What it relies on: LuaJIT 2.1's 64-bit layout (`LJ_GC64`) of `GCtab` and `Node`
//! (`lj_obj.h`), and `jitraw`'s reading of tagged values and of the stack top. `lua_next`
//! (`lj_tab_next`) goes through the array part from index 0, then the hash nodes in order,
//! skipping nil values; a cursor does the same. The layout is checked against the API when a
//! state opens the module (`tableprobe`, on tables covering each case); if any answer
//! differs, or `jitraw` reads through the API, the walk keeps to `lua_next`.
//! `HOTRELOAD_PORTABLE_WALK=1` in the environment forces that too.
//!
//! What it may do: read slots between two Lua calls that do not resize the table (the walk
//! only assigns to existing keys, like during `lua_next`, with the collector paused), and
//! push a slot's value onto a stack with room for it, which is what `lua_next` does itself.

use std::os::raw::c_int;

use mlua::ffi as lua;

use super::slots::{self as jitraw, GCV_MASK, Raw, TNIL, TTAB, itype};
use crate::vm::capi::lua_State;
use crate::vm::layout::probe::{self as tableprobe, Reader};
use crate::vm::layout::{self, PREFETCH_AHEAD};

/// `GCtab` (`lj_obj.h`, GC64), up to `hmask`.
#[repr(C)]
struct Table {
    _nextgc: u64,
    _marked: u8,
    gct: u8,
    _nomm: u8,
    _colo: i8,
    array: *const u64,
    _gclist: u64,
    metatable: usize,
    node: *const Node,
    asize: u32,
    hmask: u32,
}

/// `Node` (GC64): a hash slot, its value first.
#[repr(C)]
struct Node {
    value: u64,
    key: u64,
    _next: u64,
}

/// `GCtab.gct` of a table: `~LJ_TTAB`.
const GCT_TABLE: u8 = 11;

/// The answer of the probe.
static LAYOUT: layout::Probed = layout::Probed::new();

/// Whether the walk may read tables in place; probes the layout the first time.
///
/// # Safety
/// Inside a protected call (the probe allocates), with 16 free stack slots.
pub unsafe fn usable(l: *mut lua_State) -> bool {
    // SAFETY: forwarded; `jitraw::usable` checked (or refused) the stack and values first.
    LAYOUT.get(|| unsafe { jitraw::usable(l) && probe(l) })
}

/// True for a value the walk must see.
fn wanted(tv: u64) -> bool {
    Raw(tv).is_object()
}

/// The slots of one table, read in place, and how far the walk has read.
pub struct Cursor {
    array: *const u64,
    asize: usize,
    node: *const Node,
    nsize: usize,
    at: usize,
}

/// A slot whose key or value is an object the walk must see.
pub struct Slot {
    key: u64,
    value: u64,
}

impl Cursor {
    /// # Safety
    /// `idx` holds a table, and [`usable`] said yes.
    pub unsafe fn new(l: *mut lua_State, idx: c_int) -> Cursor {
        // SAFETY: a table's `lua_topointer` is its `GCtab`.
        unsafe { Cursor::of(lua::lua_topointer(l, idx) as usize) }
    }

    /// # Safety
    /// `table` is the address of a live table, and [`usable`] said yes.
    pub unsafe fn of(table: usize) -> Cursor {
        // SAFETY: the probe checked the layout.
        unsafe {
            let t = &*(table as *const Table);
            Cursor {
                array: t.array,
                asize: t.asize as usize,
                node: t.node,
                nsize: t.hmask as usize + 1,
                at: 0,
            }
        }
    }

    /// The next slot the walk must see: those that hold plain data (numbers, strings,
    /// booleans, light userdata, cdata) on both sides are skipped.
    ///
    /// # Safety
    /// The table has not been resized since the cursor was made.
    pub unsafe fn next(&mut self) -> Option<Slot> {
        // SAFETY: forwarded.
        unsafe { self.next_where(false, |key, value| wanted(key) || wanted(value)) }
    }

    /// The next entry, whatever it holds, as `lua_next` gives it. The objects of the entries
    /// a few nodes on are fetched into the cache meanwhile: the merge reads every key and
    /// value, and they are scattered over the heap.
    ///
    /// # Safety
    /// As `next`.
    #[inline(always)]
    pub unsafe fn next_entry(&mut self) -> Option<Slot> {
        // SAFETY: forwarded.
        unsafe { self.next_where(true, |_, _| true) }
    }

    /// The next slot with a non-nil value whose key and value `keep` accepts (fetching
    /// objects `PREFETCH_AHEAD` nodes on).
    ///
    /// # Safety
    /// As `next`.
    #[inline(always)]
    unsafe fn next_where(&mut self, ahead: bool, keep: impl Fn(u64, u64) -> bool) -> Option<Slot> {
        // SAFETY: `at` stays below the sizes read from the table, which has not changed.
        unsafe {
            let mut at = self.at;
            while at < self.asize {
                let value = *self.array.add(at);
                at += 1;
                // `lua_next` gives array keys as numbers (from 0)
                let key = ((at - 1) as f64).to_bits();
                if itype(value) != TNIL && keep(key, value) {
                    self.at = at;
                    return Some(Slot { key, value });
                }
            }
            let mut i = at - self.asize;
            while i < self.nsize {
                let n = &*self.node.add(i);
                i += 1;
                if ahead && i + PREFETCH_AHEAD < self.nsize {
                    let n = &*self.node.add(i + PREFETCH_AHEAD);
                    prefetch(n.key);
                    prefetch(n.value);
                }
                if itype(n.value) != TNIL && keep(n.key, n.value) {
                    self.at = self.asize + i;
                    return Some(Slot { key: n.key, value: n.value });
                }
            }
            self.at = self.asize + i;
            None
        }
    }
}

/// Fetches the object a value refers to (a string, a table, a function...) into the cache.
fn prefetch(tv: u64) {
    // GC64 tags of collectable values: ~4 (string) to ~12 (userdata)
    if (4..=12).contains(&!itype(tv)) {
        layout::prefetch((tv & GCV_MASK) as usize);
    }
}

impl Slot {
    /// The address of the table this slot holds under a key of plain data: the commonest
    /// kind of slot the walk must see.
    pub fn table_under_plain_key(&self) -> Option<usize> {
        (itype(self.value) == TTAB && !wanted(self.key)).then_some((self.value & GCV_MASK) as usize)
    }

    /// Pushes the key and the value, as `lua_next` does.
    ///
    /// # Safety
    /// Two free stack slots; the table still holds the slot.
    pub unsafe fn push(&self, l: *mut lua_State) {
        // SAFETY: forwarded; both values are live while the table holds them.
        unsafe {
            jitraw::push(l, Raw(self.key));
            jitraw::push(l, Raw(self.value));
        }
    }
}

/// Where slot `n` of the table at `table` is, if it is in the array part: `Anchors`
/// reads and writes the anchor tables there.
///
/// # Safety
/// `table` is the address of a live table, and [`usable`] said yes.
#[inline]
pub unsafe fn array_slot(table: usize, n: u32) -> Option<*mut u64> {
    // SAFETY: the probe checked the layout; `n` is below the array part's size.
    unsafe {
        let t = &*(table as *const Table);
        (n < t.asize).then(|| t.array.add(n as usize).cast_mut())
    }
}

/// Whether the table at `table` has a metatable.
///
/// # Safety
/// As [`Cursor::of`].
pub unsafe fn has_metatable(table: usize) -> bool {
    // SAFETY: the probe checked the layout.
    unsafe { (*(table as *const Table)).metatable != 0 }
}

/// Pushes the table at `table`.
///
/// # Safety
/// A free stack slot; `table` is the address of a table reachable from the program.
pub unsafe fn push_table(l: *mut lua_State, table: usize) {
    // SAFETY: forwarded; a GC64 tagged value is the address under the type's tag.
    unsafe { jitraw::push(l, Raw(table as u64 | (u64::from(TTAB) << 47))) }
}

/// `lua_pop`, in place.
///
/// # Safety
/// The `n` values on top are the caller's own.
pub unsafe fn pop(l: *mut lua_State, n: usize) {
    // SAFETY: forwarded.
    unsafe { jitraw::pop(l, n) }
}

/// How the shared checks (`tableprobe`) read tables with this module.
pub(crate) const READER: Reader = Reader {
    slots: cursor_slots,
    parts_ok,
    has_metatable,
    array_size,
    // (`lj_tab_new_ah`: index 0 too, unless the array part is empty)
    created_array_size: |n| if n > 0 { n as usize + 1 } else { 0 },
    push_table,
    pop,
};

/// `asize` of the table at `p`.
///
/// # Safety
/// `p` is a live table whose header the probe checked.
unsafe fn array_size(p: usize) -> usize {
    // SAFETY: as documented.
    unsafe { (*(p as *const Table)).asize as usize }
}

/// Checks the layout this module reads against what the API says, on tables built for it.
///
/// # Safety
/// Inside a protected call, with 16 free stack slots. Leaves the stack as it found it.
pub(crate) unsafe fn probe(l: *mut lua_State) -> bool {
    // SAFETY: until each structure is checked, only its first bytes are read, and only from
    // tables (a `GCtab` is 64 bytes in GC64); the pushes stay within the 16 slots.
    unsafe {
        let top = lua::lua_gettop(l);
        // 1: an array part of 17 (indices 0 to 16) holding tables at 0 to 9 and 11
        lua::lua_createtable(l, 16, 0);
        for i in (0..=9).chain([11]) {
            lua::lua_createtable(l, 0, 0);
            lua::lua_rawseti(l, -2, i);
        }
        let t = &*(lua::lua_topointer(l, -1) as *const Table);
        let ok = t.gct == GCT_TABLE
            && t.asize == 17
            && t.metatable == 0
            && tableprobe::agrees(l, lua::lua_gettop(l), 11, &READER)
            // 2: a hash part of 8 slots, with a metatable
            && tableprobe::hash_part(l, &READER, |p, mt| {
                let t = &*(p as *const Table);
                t.gct == GCT_TABLE && t.hmask == 7 && t.metatable == mt
            })
            // 3: every array size and limit the shapes give
            && tableprobe::shapes(l, &READER);
        lua::lua_settop(l, top);
        ok
    }
}

/// The array and the hash part of the table at `p` are where aligned pointers say.
///
/// # Safety
/// `p` is a live table whose header the probe checked.
unsafe fn parts_ok(p: usize) -> bool {
    // SAFETY: the structure's first fields were checked against the API before.
    let t = unsafe { &*(p as *const Table) };
    let aligned = |p: usize| p != 0 && p.is_multiple_of(8);
    (t.asize == 0 || aligned(t.array as usize)) && aligned(t.node as usize)
}

/// `tableprobe::count_slots` with a cursor of this module over the table at `t`.
///
/// # Safety
/// `t` absolute and a table whose layout the probe checked (or is checking); three free
/// stack slots. Leaves the stack as it found it.
unsafe fn cursor_slots(l: *mut lua_State, t: c_int) -> Option<usize> {
    // SAFETY: forwarded; each slot is pushed while the table holds it.
    unsafe {
        let mut cursor = Cursor::new(l, t);
        tableprobe::count_slots(l, t, |l| cursor.next().map(|s| s.push(l)).is_some())
    }
}
