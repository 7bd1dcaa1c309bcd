//! LuaJIT only: the VM walk reads a table's slots in place instead of calling `lua_next`
//! once per entry, and hands over (pushes) only the entries that hold an object the walk
//! must see — a table, a function, a full userdata or a thread. The same job as `lua54/tables`
//! does on Lua 5.4, with LuaJIT's layout.
//!
//! Why: `lua_next` finds its key again and copies key and value to the stack for every
//! entry, and the walk's type checks called the API twice more; most slots hold plain data.
//!
//! What it relies on: LuaJIT 2.1's 64-bit layout (`LJ_GC64`) of `GCtab` and `Node`
//! (`lj_obj.h`), and `luajit/slots`'s reading of tagged values and of the stack top. `lua_next`
//! (`lj_tab_next`) goes through the array part from index 0, then the hash nodes in order,
//! skipping nil values; a cursor does the same. The layout is checked against the API when a
//! state opens the module (`probe`, on tables covering each case); if any answer
//! differs, or `luajit/slots` reads through the API, the walk keeps to `lua_next`.
//! `HOTRELOAD_PORTABLE_WALK=1` in the environment forces that too.
//!
//! What it may do: read slots between two Lua calls that do not resize the table (the walk
//! only assigns to existing keys, like during `lua_next`, with the collector paused), and
//! push a slot's value onto a stack with room for it, which is what `lua_next` does itself.

use std::os::raw::c_int;

use mlua::ffi as lua;

use super::slots::{self, GCV_MASK, Raw, TNIL, TTAB, itype};
use crate::vm::capi::lua_State;
use crate::vm::layout;
use crate::vm::layout::cursor::{self, TableLayout};
use crate::vm::layout::probe::{self as checks, Reader};

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
pub(crate) struct Node {
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
    // SAFETY: forwarded; `slots::usable` checked (or refused) the stack and values first.
    LAYOUT.get(|| unsafe { slots::usable(l) && probe(l) })
}

/// True for a value the walk must see.
fn wanted(tv: u64) -> bool {
    Raw(tv).is_object()
}

/// LuaJIT's tables (GC64) as the cursor reads them.
pub(crate) struct LayoutJit;

/// A cursor over a LuaJIT table.
pub(crate) type Cursor = cursor::Cursor<LayoutJit>;

impl TableLayout for LayoutJit {
    type Value = u64;
    type ArraySlot = u64;
    type Node = Node;

    unsafe fn parts(table: usize) -> (*const u64, usize, *const Node, usize) {
        // SAFETY: the probe checked the layout.
        let t = unsafe { &*(table as *const Table) };
        (t.array, t.asize as usize, t.node, t.hmask as usize + 1)
    }

    /// `lua_next` gives array keys as numbers, from 0.
    #[inline(always)]
    fn array_key(index: usize) -> u64 {
        (index as f64).to_bits()
    }

    #[inline(always)]
    unsafe fn array_value(slot: *const u64) -> Option<u64> {
        // SAFETY: a slot of a live array part.
        let v = unsafe { *slot };
        (itype(v) != TNIL).then_some(v)
    }

    #[inline(always)]
    unsafe fn node_entry(node: *const Node) -> Option<(u64, u64)> {
        // SAFETY: a node of a live table.
        let n = unsafe { &*node };
        (itype(n.value) != TNIL).then_some((n.key, n.value))
    }

    #[inline(always)]
    unsafe fn prefetch_node(node: *const Node) {
        // SAFETY: a node of a live table.
        let n = unsafe { &*node };
        prefetch(n.key);
        prefetch(n.value);
    }

    #[inline(always)]
    fn wanted(v: u64) -> bool {
        wanted(v)
    }

    #[inline(always)]
    fn table(v: u64) -> Option<usize> {
        (itype(v) == TTAB).then_some((v & GCV_MASK) as usize)
    }

    #[inline(always)]
    unsafe fn push(l: *mut lua_State, v: u64) {
        // SAFETY: forwarded.
        unsafe { slots::push(l, Raw(v)) }
    }
}

/// Fetches the object a value refers to (a string, a table, a function...) into the cache.
fn prefetch(tv: u64) {
    // GC64 tags of collectable values: ~4 (string) to ~12 (userdata)
    if (4..=12).contains(&!itype(tv)) {
        layout::prefetch((tv & GCV_MASK) as usize);
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
    unsafe { slots::push(l, Raw(table as u64 | (u64::from(TTAB) << 47))) }
}

/// `lua_pop`, in place.
///
/// # Safety
/// The `n` values on top are the caller's own.
pub unsafe fn pop(l: *mut lua_State, n: usize) {
    // SAFETY: forwarded.
    unsafe { slots::pop(l, n) }
}

/// How the shared checks (`probe`) read tables with this module.
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
            && checks::agrees(l, lua::lua_gettop(l), 11, &READER)
            // 2: a hash part of 8 slots, with a metatable
            && checks::hash_part(l, &READER, |p, mt| {
                let t = &*(p as *const Table);
                t.gct == GCT_TABLE && t.hmask == 7 && t.metatable == mt
            })
            // 3: every array size and limit the shapes give
            && checks::shapes(l, &READER);
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

/// `checks::count_slots` with a cursor of this module over the table at `t`.
///
/// # Safety
/// `t` absolute and a table whose layout the probe checked (or is checking); three free
/// stack slots. Leaves the stack as it found it.
unsafe fn cursor_slots(l: *mut lua_State, t: c_int) -> Option<usize> {
    // SAFETY: forwarded; each slot is pushed while the table holds it.
    unsafe {
        let mut cursor = Cursor::new(l, t);
        checks::count_slots(l, t, |l| cursor.next().map(|s| s.push(l)).is_some())
    }
}
