//! Lua 5.4 only: the VM walk reads a table's slots in place instead of calling `lua_next`
//! once per entry, and hands over (pushes) only the entries that hold an object the walk
//! must see — a table, a function with a body or upvalues, a full userdata or a thread.
//!
//! Why: `lua_next` finds the key again and copies key and value to the stack for every entry,
//! where the collector reads each slot in a few instructions; most slots hold plain data
//! (numbers, strings, booleans) that the walk never needs on the stack. The cost of each way
//! against a full collection is in `bench/RESULTS.md` (`make profile`).
//!
//! What it relies on: the layout of `Table`, `Node`, `TValue` and the `top` of `lua_State`,
//! identical from Lua 5.4.0 to 5.4.9 (`lobject.h`, `lstate.h`). The layout is not part of
//! Lua's API, so [`probe`] checks it against the API on tables built to cover every case
//! (array part, hash part, an array limit moved by `#`, each kind of key) when a state opens
//! the module; if any answer differs, or the host is not 5.4 on a 64-bit target, the walk
//! keeps to `lua_next`. `HOTRELOAD_PORTABLE_WALK=1` in the environment forces that too.
//!
//! What it may do: read slots between two Lua calls that do not resize the table (the walk
//! only assigns to existing keys, like during `lua_next`, with the collector paused), and
//! push a slot's value onto a stack with room for it, which is what `lua_next` does itself.

use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicU8, Ordering};

use mlua::ffi as lua;

use crate::vm::capi::lua_State;
use crate::vm::layout;
use crate::vm::layout::cursor::{self, TableLayout};
use crate::vm::layout::probe::{self as checks, Reader};

/// `TValue`: a value and its type tag (`lobject.h`).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct TValue {
    pub(crate) value: u64,
    pub(crate) tt: u8,
}

/// `Node`: a hash slot, its value first (`lobject.h`).
#[repr(C)]
pub(crate) struct Node {
    value: u64,
    tt: u8,
    key_tt: u8,
    _next: i32,
    key_val: u64,
}

/// `Table` (`lobject.h`).
#[repr(C)]
struct Table {
    _next: *const c_void,
    tt: u8,
    marked: u8,
    flags: u8,
    lsizenode: u8,
    alimit: u32,
    array: *const TValue,
    node: *const Node,
    _lastfree: *const Node,
    metatable: *const c_void,
}

/// The head of `lua_State` (`lstate.h`), up to the current call (whose `func` is the first
/// field of a `CallInfo`); this module only uses `top`, `lua54/slots` both.
#[repr(C)]
pub(crate) struct StateHead {
    _next: *const c_void,
    _tt: u8,
    _marked: u8,
    _status: u8,
    _allowhook: u8,
    _nci: u16,
    pub(crate) top: *mut TValue,
    _l_g: *const c_void,
    pub(crate) ci: *const *const TValue,
}

/// Type tags (`lobject.h`): the low nibble is the basic type, bit 6 marks collectable values.
pub(crate) const COLLECTABLE: u8 = 1 << 6;
pub(crate) const VNUMINT: u8 = 3;
const VTABLE: u8 = 5;
/// Bit 7 of `flags` (5.4.1 on) or of `marked` (5.4.0, whose `flags` start as all ones):
/// `alimit` is not the real size of the array part.
const BITRAS: u8 = 1 << 7;
/// Where the probe found `BITRAS`: 0 until probed, else one of these.
static RAS_IN: AtomicU8 = AtomicU8::new(0);
const RAS_IN_FLAGS: u8 = 1;
const RAS_IN_MARKED: u8 = 2;

/// True for a tag the walk must see: a table, a closure (not a light C function), a full
/// userdata or a thread.
pub(crate) fn wanted(tt: u8) -> bool {
    tt & COLLECTABLE != 0 && (5..=8).contains(&(tt & 0x0f))
}

fn is_empty(tt: u8) -> bool {
    tt & 0x0f == 0
}

/// The answer of the probe.
static LAYOUT: layout::Probed = layout::Probed::new();

/// Whether the walk may read tables in place; probes the layout the first time.
///
/// # Safety
/// Inside a protected call (the probe allocates), with 16 free stack slots.
pub unsafe fn usable(l: *mut lua_State) -> bool {
    // SAFETY: forwarded.
    LAYOUT.get(|| unsafe { probe(l) })
}

/// Lua 5.4's tables as the cursor reads them.
pub(crate) struct Layout54;

/// A cursor over a Lua 5.4 table.
pub(crate) type Cursor = cursor::Cursor<Layout54>;

impl TableLayout for Layout54 {
    type Value = TValue;
    type ArraySlot = TValue;
    type Node = Node;

    unsafe fn parts(table: usize) -> (*const TValue, usize, *const Node, usize) {
        // SAFETY: the probe checked the layout.
        let t = unsafe { &*(table as *const Table) };
        (t.array, real_asize(t), t.node, 1 << t.lsizenode)
    }

    #[inline(always)]
    fn array_key(index: usize) -> TValue {
        TValue { value: index as u64 + 1, tt: VNUMINT }
    }

    #[inline(always)]
    unsafe fn array_value(slot: *const TValue) -> Option<TValue> {
        // SAFETY: a slot of a live array part.
        let v = unsafe { *slot };
        (!is_empty(v.tt)).then_some(v)
    }

    #[inline(always)]
    unsafe fn node_entry(node: *const Node) -> Option<(TValue, TValue)> {
        // SAFETY: a node of a live table; the tags first: the value bits of an empty slot
        // or a boolean are not set.
        unsafe {
            let (tt, key_tt) = ((*node).tt, (*node).key_tt);
            (!is_empty(tt)).then(|| {
                (TValue { value: (*node).key_val, tt: key_tt }, TValue { value: (*node).value, tt })
            })
        }
    }

    #[inline(always)]
    unsafe fn prefetch_node(node: *const Node) {
        // SAFETY: a node of a live table.
        let n = unsafe { &*node };
        prefetch(n.key_tt, n.key_val);
        prefetch(n.tt, n.value);
    }

    #[inline(always)]
    fn wanted(v: TValue) -> bool {
        wanted(v.tt)
    }

    #[inline(always)]
    fn table(v: TValue) -> Option<usize> {
        (v.tt == VTABLE | COLLECTABLE).then_some(v.value as usize)
    }

    #[inline(always)]
    unsafe fn push(l: *mut lua_State, v: TValue) {
        // SAFETY: forwarded.
        unsafe { push(l, v) }
    }
}

/// Fetches the object a value refers to (a string, a table, a function...) into the cache.
fn prefetch(tt: u8, value: u64) {
    if tt & COLLECTABLE != 0 {
        layout::prefetch(value as usize);
    }
}

/// Whether the table at `table` has a metatable.
///
/// # Safety
/// As [`Cursor::of`].
pub unsafe fn has_metatable(table: usize) -> bool {
    // SAFETY: the probe checked the layout.
    unsafe { !(*(table as *const Table)).metatable.is_null() }
}

/// Pushes the table at `table`.
///
/// # Safety
/// A free stack slot; `table` is the address of a table reachable from the program.
pub unsafe fn push_table(l: *mut lua_State, table: usize) {
    // SAFETY: forwarded.
    unsafe { push(l, TValue { value: table as u64, tt: VTABLE | COLLECTABLE }) }
}

/// `lua_pop` without `lua_settop`'s search for to-be-closed variables.
///
/// # Safety
/// The `n` values on top are the caller's own (none is a to-be-closed variable).
pub unsafe fn pop(l: *mut lua_State, n: usize) {
    // SAFETY: the probe checked where `top` is.
    unsafe {
        let head = l as *mut StateHead;
        (*head).top = (*head).top.sub(n);
    }
}

/// `luaH_realasize`: `#` may have lowered `alimit` below the size of the array part.
fn real_asize(t: &Table) -> usize {
    real_asize_with(t, RAS_IN.load(Ordering::Relaxed))
}

/// `real_asize` with `BITRAS` where `ras_in` says (the probe tries each place this way).
fn real_asize_with(t: &Table, ras_in: u8) -> usize {
    let limit = t.alimit;
    let bits = if ras_in == RAS_IN_MARKED { t.marked } else { t.flags };
    // `ispow2`, for which 0 is a power of 2
    if bits & BITRAS == 0 || limit & limit.wrapping_sub(1) == 0 {
        limit as usize
    } else {
        limit.next_power_of_two() as usize
    }
}

/// `setobj2s` + `api_incr_top`.
///
/// # Safety
/// A free stack slot; `v` is a live value.
pub(crate) unsafe fn push(l: *mut lua_State, v: TValue) {
    // SAFETY: the probe checked where `top` is; the caller reserved the slot. Only the
    // value and the tag are written, as `setobj2s` does.
    unsafe {
        let head = l as *mut StateHead;
        let top = (*head).top;
        (*top).value = v.value;
        (*top).tt = v.tt;
        (*head).top = top.add(1);
    }
}

/// Checks the layout this module reads against what the API says, on tables built for it.
///
/// # Safety
/// Inside a protected call, with 16 free stack slots. Leaves the stack as it found it.
pub(crate) unsafe fn probe(l: *mut lua_State) -> bool {
    if cfg!(not(target_pointer_width = "64")) {
        return false;
    }
    // SAFETY: until each structure is checked, only its first bytes are read, and only from
    // objects at least that large in any Lua 5.4 (a `Table` is 56 bytes, a `lua_State`
    // more); the pushes stay within the 16 slots.
    unsafe {
        // SAFETY: plain API call.
        if lua::lua_version(l) != 504.0 {
            return false;
        }
        let top = lua::lua_gettop(l);
        let ok = probe_stack(l) && probe_tables(l);
        lua::lua_settop(l, top);
        ok
    }
}

/// `top` is where the last push went, and a push through it is a push.
unsafe fn probe_stack(l: *mut lua_State) -> bool {
    // SAFETY: see `probe`; `top` is only written after it pointed just past a value the API
    // pushed, with a free slot reserved.
    unsafe {
        let n: i64 = 0x1234_5678_9abc;
        lua::lua_pushinteger(l, n);
        let head = l as *mut StateHead;
        let top = (*head).top;
        if top.is_null() || !(top as usize).is_multiple_of(8) {
            return false;
        }
        let last = *top.sub(1);
        if last.value != n as u64 || last.tt != VNUMINT {
            return false;
        }
        let before = lua::lua_gettop(l);
        push(l, last);
        lua::lua_gettop(l) == before + 1
            && lua::lua_rawequal(l, -1, -2) != 0
            && lua::lua_isinteger(l, -1) != 0
    }
}

/// How the shared checks (`probe`) read tables with this module.
pub(crate) const READER: Reader = Reader {
    slots: cursor_slots,
    parts_ok,
    has_metatable,
    array_size,
    created_array_size: |n| n.max(0) as usize,
    push_table,
    pop,
};

/// [`real_asize`] of the table at `p`.
///
/// # Safety
/// `p` is a live table whose header the probe checked.
unsafe fn array_size(p: usize) -> usize {
    // SAFETY: as documented.
    real_asize(unsafe { &*(p as *const Table) })
}

/// Cursors agree with `lua_next` on tables covering the array part, the hash part, keys of
/// every kind, and an array limit `#` has moved; first finds where `BITRAS` is.
unsafe fn probe_tables(l: *mut lua_State) -> bool {
    // SAFETY: see `probe`; every table is on the stack while it is read.
    unsafe {
        // 1: an array part of 5, its limit the real size; then one of 16 with 1..9 and 11
        // set: `#` gives 9 and lowers `alimit` to it, which sets `BITRAS`
        lua::lua_createtable(l, 5, 0);
        let real = &*(lua::lua_topointer(l, -1) as *const Table);
        lua::lua_createtable(l, 16, 0);
        for i in (1..=9).chain([11]) {
            lua::lua_createtable(l, 0, 0);
            lua::lua_rawseti(l, -2, i);
        }
        if lua::lua_rawlen(l, -1) != 9 {
            return false;
        }
        let lowered = &*(lua::lua_topointer(l, -1) as *const Table);
        if real.tt != VTABLE || lowered.tt != VTABLE || real.alimit != 5 || lowered.alimit != 9 {
            return false;
        }
        let ras_in = [RAS_IN_FLAGS, RAS_IN_MARKED].into_iter().find(|&place| {
            real_asize_with(real, place) == 5 && real_asize_with(lowered, place) == 16
        });
        let Some(ras_in) = ras_in else { return false };
        RAS_IN.store(ras_in, Ordering::Relaxed);
        let ok = checks::agrees(l, lua::lua_gettop(l), 10, &READER)
            // 2: a hash part of 8 slots, with a metatable
            && checks::hash_part(l, &READER, |p, mt| {
                let t = &*(p as *const Table);
                t.tt == VTABLE && t.lsizenode == 3 && t.metatable as usize == mt
            })
            // 3: every array size and limit the shapes below give
            && checks::shapes(l, &READER);
        if !ok {
            RAS_IN.store(0, Ordering::Relaxed);
        }
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
    (real_asize(t) == 0 || aligned(t.array as usize)) && aligned(t.node as usize)
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
