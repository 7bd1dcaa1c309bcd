//! LuaJIT only: reads a stack slot as plain data in place, instead of through three or four
//! API calls (`lua_type`, then `lua_iscfunction`, `lua_topointer` or `lua_tolstring`).
//!
//! Why: the merge planner reads every key and value of both versions, and on LuaJIT, whose
//! compiler is fast, those calls were a large share of the planner's instructions
//! (`make profile`; figures in `bench/RESULTS.md`).
//!
//! What it relies on: LuaJIT 2.1's 64-bit object layout (`LJ_GC64`, the default on x64 and
//! arm64): an 8-byte `TValue` whose top 17 bits tag everything but numbers, the `base` and
//! `top` of `lua_State`, the length of a `GCstr` (at one of two offsets, depending on the
//! 2.1 snapshot) and the function id of a `GCfunc` (`lj_obj.h`). That is not LuaJIT's API,
//! so [`probe`] checks it against the API on values of every kind when a state opens the
//! module; if any answer differs (a 32-bit build, a non-GC64 build, another layout), reads
//! keep to the API. `HOTRELOAD_PORTABLE_WALK=1` in the environment forces that too.
//!
//! What it reads: only values the API would give the same way — nil, booleans, numbers,
//! strings, tables, functions and threads. Anything else (userdata, whose `lua_topointer` is
//! its payload, light userdata, cdata) and pseudo-indices go through the API.
//!
//! The VM walk also reads a Lua function's upvalue cells (`GCfuncL`, `GCupval`; see
//! `cells`) and its environment in place, probed the same way.

use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicU32, Ordering};

use mlua::ffi as lua;

use crate::vm::capi::{self, lua_State};
use crate::vm::layout;
use crate::vm::layout::cells::{self, Layout, Probe};
use crate::vm::value::{self, Val};

/// The head of `lua_State` (`lj_obj.h`, GC64), up to `top`.
#[repr(C)]
struct StateHead {
    _nextgc: u64,
    _marked: u8,
    _gct: u8,
    _dummy_ffid: u8,
    _status: u8,
    _glref: u64,
    _gclist: u64,
    base: *const u64,
    top: *const u64,
}

/// The payload bits of a tagged value: a GC object's address.
pub(crate) const GCV_MASK: u64 = (1 << 47) - 1;
/// Type tags (`itype`, the top 17 bits sign-extended): `~n` for LuaJIT's type number `n`.
pub(crate) const TNIL: u32 = !0;
const TFALSE: u32 = !1;
const TTRUE: u32 = !2;
const TSTR: u32 = !4;
pub(crate) const TTHREAD: u32 = !6;
pub(crate) const TFUNC: u32 = !8;
pub(crate) const TTAB: u32 = !11;
const TCDATA: u32 = !10;
/// `GCcdata`: its ctype id follows the 10-byte `GCHeader`; its payload follows the 16-byte
/// object (`cdataptr`, what `lua_topointer` gives).
const CDATA_CTYPEID_OFFSET: usize = 10;
const CDATA_PAYLOAD_OFFSET: usize = 16;
/// The ctype ids of `int64_t` and `uint64_t` (high and low 16 bits) as the probe found them
/// on `5LL` and `7ULL`; 0 until then, and where it could not (no FFI): cdata then goes
/// through the API, by identity only.
static INT64_IDS: AtomicU32 = AtomicU32::new(0);
/// Tags below this are doubles (`LJ_TISNUM`); in a dual-number build (arm64), integers are
/// tagged with it and go through the API.
const TISNUM: u32 = !13;
/// `GCfunc.ffid` (after the 10-byte `GCHeader`): 0 for a Lua function.
const FFID_OFFSET: usize = 10;
/// A `GCstr`'s characters follow its 24-byte header.
const STR_DATA_OFFSET: usize = 24;
/// Where `GCstr.len` may be: after `hash` (2.1 from 2020 on, with `sid`), or before it.
const STR_LEN_OFFSETS: [usize; 2] = [20, 16];
/// `GCfunc`: its environment.
const FN_ENV_OFFSET: usize = 16;
/// `GCfuncL`: its upvalue count and cells (`uvptr`); `GCupval.v`: where the cell's value is
/// (in the cell once closed, on a stack while open).
const CELLS: Layout = Layout {
    count: 11,
    cells: 40,
    value: 32,
    proto_ok,
    name: upvalue_name,
    source: chunk_name,
    proto: proto_of,
};
/// `GCfuncL.pc`: the bytecode, which follows the function's `GCproto` (104 bytes in GC64).
const FN_PC_OFFSET: usize = 32;
const PROTO_SIZE: usize = 104;
/// `GCproto.uvinfo`: the upvalue names, one after another, each ended by a zero byte (none in
/// stripped bytecode).
const PROTO_UVINFO_OFFSET: usize = 88;
/// `GCproto.chunkname`: the `GCstr` naming the chunk.
const PROTO_CHUNKNAME_OFFSET: usize = 64;
/// Tags of the objects the walk must see besides tables and functions.
pub(crate) const TUDATA: u32 = !12;
/// Marks a pseudo-index (`LUA_REGISTRYINDEX` and below).
const PSEUDO: c_int = -10000;

/// The answer of the probe: the index in `STR_LEN_OFFSETS` of the string length's offset.
static LAYOUT: layout::Probed = layout::Probed::new();

/// Probes the layout once per process (one process links one LuaJIT); true if reads are
/// made in place from now on.
///
/// # Safety
/// Inside a protected call (the probe allocates and reserves its stack).
pub unsafe fn usable(l: *mut lua_State) -> bool {
    // SAFETY: forwarded.
    LAYOUT.get_variant(|| unsafe { probe(l) }.and_then(|i| u8::try_from(i).ok())).is_some()
}

/// Whether the layout was probed and found: the in-place readers' check, which never probes.
#[inline]
fn found() -> bool {
    LAYOUT.found()
}

/// The value at `idx` as `access::read` gives it, or `None` where the API must answer.
///
/// # Safety
/// `idx` must be a valid index of `l`.
#[inline]
pub unsafe fn read<'a>(l: *mut lua_State, idx: c_int) -> Option<Val<'a>> {
    let offset = STR_LEN_OFFSETS[usize::from(LAYOUT.variant()?) & 1];
    // SAFETY: forwarded; the probe found this layout.
    unsafe { read_with(l, idx, offset) }
}

/// `read` with the string length at `len_offset`, whatever `LAYOUT` says (the probe checks
/// a candidate layout this way before publishing it).
///
/// # Safety
/// As `read`, and the layout is the one probed, with that offset.
unsafe fn read_with<'a>(l: *mut lua_State, idx: c_int, len_offset: usize) -> Option<Val<'a>> {
    if idx <= PSEUDO {
        return None;
    }
    // SAFETY: a valid index is below `top` and, if negative, at or above `base` (as
    // `index2adr` computes it); an acceptable one past the top is compared before reading.
    unsafe {
        let head = &*(l as *const StateHead);
        let slot = if idx > 0 {
            head.base.wrapping_add(idx as usize - 1)
        } else {
            head.top.wrapping_offset(idx as isize)
        };
        if slot >= head.top {
            return Some(Val::Nil); // an acceptable index past the top: none, read as nil
        }
        decode(*slot, len_offset)
    }
}

/// A value read in place (a GC64 `TValue`).
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Raw(pub(crate) u64);

impl Raw {
    /// A table, a function, a full userdata or a thread: a value the walk must look at.
    pub fn is_object(self) -> bool {
        matches!(itype(self.0), TTAB | TFUNC | TUDATA | TTHREAD)
    }
}

pub(crate) fn itype(tv: u64) -> u32 {
    ((tv as i64) >> 47) as u32
}

/// The upvalue cells of a Lua function, read in place.
pub type Upvalues = cells::Upvalues<Raw>;

/// The upvalues of the function at `idx` if it is a Lua function and reads are in place.
///
/// # Safety
/// `idx` must be a valid index of `l`.
pub unsafe fn upvalues(l: *mut lua_State, idx: c_int) -> Option<Upvalues> {
    // SAFETY: forwarded; a Lua function's header and cell array are read as probed.
    unsafe {
        let Some(Val::LuaFn(p)) = read(l, idx) else { return None };
        Some(Upvalues::of(p, &CELLS))
    }
}

/// The address of the prototype of the Lua function at `p` (its bytecode follows it).
///
/// # Safety
/// `p` is a live Lua function; the layout was probed.
unsafe fn proto_of(p: usize) -> usize {
    // SAFETY: as documented.
    unsafe { (*((p + FN_PC_OFFSET) as *const usize)).wrapping_sub(PROTO_SIZE) }
}

/// Asks the CPU to fetch what the merge reads of the Lua function at `p` after its header (see
/// `cells::Upvalues::prefetch`), where the layout was probed; nothing otherwise.
///
/// # Safety
/// `p` is a live Lua function (a `Val::LuaFn` address `read` gave).
pub unsafe fn prefetch_function(p: usize) {
    if LAYOUT.found() {
        // SAFETY: as documented; the layout was probed.
        unsafe { Upvalues::of(p, &CELLS).prefetch() }
    }
}

/// The address of the environment table of the function at `p` (a `Val::LuaFn` or `CFn`
/// address `read` gave).
///
/// # Safety
/// `p` is a live function; the layout was probed.
pub unsafe fn env_of(p: usize) -> usize {
    // SAFETY: as documented.
    unsafe { *((p + FN_ENV_OFFSET) as *const usize) }
}

/// The value at the positive index `idx`, below the top, as stored; `None` where the API
/// must answer.
///
/// # Safety
/// `idx` must be a valid index of `l`.
#[inline]
pub unsafe fn raw_at(l: *mut lua_State, idx: c_int) -> Option<Raw> {
    if !found() || idx <= 0 {
        return None;
    }
    // SAFETY: the probe checked where `base` and `top` are; the slot is below the top.
    unsafe {
        let head = &*(l as *const StateHead);
        let slot = head.base.wrapping_add(idx as usize - 1);
        (slot < head.top).then(|| Raw(*slot))
    }
}

/// Pushes a value read in place, as `lua_pushvalue` would.
///
/// # Safety
/// A free stack slot (reserved with `lua_checkstack`); `v` is still alive.
pub unsafe fn push(l: *mut lua_State, v: Raw) {
    // SAFETY: the probe checked where `top` is; the caller reserved the slot.
    unsafe {
        let head = l as *mut StateHead;
        let top = (*head).top as *mut u64;
        *top = v.0;
        (*head).top = top.add(1);
    }
}

/// `GCproto`'s `gct` (`~LJ_TPROTO`) and upvalue count (`sizeuv`).
const PROTO_GCT: u8 = 7;
const PROTO_GCT_OFFSET: usize = 9;
const PROTO_SIZEUV_OFFSET: usize = 60;

/// Whether the Lua function at `p`, with `count` upvalues, has a prototype where the layout
/// says (checked by the probe before any name is read).
///
/// # Safety
/// `p` is a live Lua function whose cells the probe checked.
unsafe fn proto_ok(p: usize, count: c_int) -> bool {
    // SAFETY: `pc` is within the function; the prototype is only read once `pc` is a
    // plausible bytecode address, and only its header.
    unsafe {
        let pc = *((p + FN_PC_OFFSET) as *const usize);
        if pc < PROTO_SIZE || !pc.is_multiple_of(4) {
            return false;
        }
        let proto = pc - PROTO_SIZE;
        proto.is_multiple_of(8)
            && *((proto + PROTO_GCT_OFFSET) as *const u8) == PROTO_GCT
            && c_int::from(*((proto + PROTO_SIZEUV_OFFSET) as *const u8)) == count
    }
}

/// The name of upvalue `n` (from 1) of the Lua function at `p` (`lj_debug_uvname`).
///
/// # Safety
/// `p` is a live Lua function with at least `n` upvalues; the layout was probed (or is being
/// probed, past the checks of the function's cells).
unsafe fn upvalue_name(p: usize, n: c_int) -> &'static [u8] {
    // SAFETY: a Lua function's bytecode follows its prototype, whose `uvinfo` holds one name
    // per upvalue.
    unsafe {
        let pc = *((p + FN_PC_OFFSET) as *const usize);
        let uvinfo = *((pc.wrapping_sub(PROTO_SIZE) + PROTO_UVINFO_OFFSET) as *const *const u8);
        if uvinfo.is_null() {
            return b"";
        }
        // (skips one zero byte per name, as `lj_debug_uvname` does, even after an empty
        // name; names are short: a loop, not a call to strlen per name)
        let mut start = uvinfo;
        for _ in 1..n {
            while *start != 0 {
                start = start.add(1);
            }
            start = start.add(1);
        }
        let mut len = 0;
        while *start.add(len) != 0 {
            len += 1;
        }
        std::slice::from_raw_parts(start, len)
    }
}

/// The name of the chunk of the Lua function at `p`: the characters of its prototype's
/// `chunkname`, which `lua_getinfo` gives as `source` (`strdata`).
///
/// # Safety
/// As `upvalue_name`.
unsafe fn chunk_name(p: usize) -> *const c_char {
    // SAFETY: every prototype has a chunk name, a string whose characters follow its header.
    unsafe {
        let pc = *((p + FN_PC_OFFSET) as *const usize);
        let name = *((pc.wrapping_sub(PROTO_SIZE) + PROTO_CHUNKNAME_OFFSET) as *const usize);
        (name + STR_DATA_OFFSET) as *const c_char
    }
}

/// Drops the values above the index `idx` (positive, at or below the top), as `lua_settop`
/// would; false where the API must do it (no layout, or a top to raise).
///
/// # Safety
/// `idx` is an index of the running function; the values dropped are the caller's own.
#[inline]
pub unsafe fn drop_to(l: *mut lua_State, idx: c_int) -> bool {
    if !found() || idx < 0 {
        return false;
    }
    // SAFETY: the probe checked where `base` and `top` are; the new top is not above the old.
    unsafe {
        let head = l as *mut StateHead;
        let top = (*head).base.wrapping_add(idx as usize);
        if top > (*head).top {
            return false;
        }
        (*head).top = top;
    }
    true
}

/// Pops `n` values, as `lua_pop` would.
///
/// # Safety
/// The `n` values on top are the caller's own; the layout was probed.
pub(crate) unsafe fn pop(l: *mut lua_State, n: usize) {
    // SAFETY: the probe checked where `top` is.
    unsafe {
        let head = l as *mut StateHead;
        (*head).top = (*head).top.sub(n);
    }
}

/// A GC64 `TValue` as `access::read` gives it, or `None` for the kinds left to the API.
///
/// # Safety
/// `tv` is a live value and the probe checked the layout (`len_offset` included).
unsafe fn decode<'a>(tv: u64, len_offset: usize) -> Option<Val<'a>> {
    let itype = ((tv as i64) >> 47) as u32;
    if itype < TISNUM {
        return Some(Val::Num(f64::from_bits(tv)));
    }
    let p = (tv & GCV_MASK) as usize;
    // SAFETY: `p` is the object the tag says; both fields are within its header.
    unsafe {
        Some(match itype {
            TNIL => Val::Nil,
            TFALSE => Val::Bool(false),
            TTRUE => Val::Bool(true),
            TSTR => {
                let len = *((p + len_offset) as *const u32) as usize;
                Val::Str(std::slice::from_raw_parts((p + STR_DATA_OFFSET) as *const u8, len))
            }
            TTAB => Val::Table(p),
            TFUNC if *((p + FFID_OFFSET) as *const u8) == 0 => Val::LuaFn(p),
            TFUNC => Val::CFn(p),
            TTHREAD => Val::Thread(p),
            TCDATA => {
                let ids = INT64_IDS.load(Ordering::Relaxed);
                if ids == 0 {
                    return None;
                }
                let payload = p + CDATA_PAYLOAD_OFFSET;
                let id = *((p + CDATA_CTYPEID_OFFSET) as *const u16);
                let int64 = u32::from(id) == ids >> 16 || u32::from(id) == ids & 0xffff;
                Val::Cdata(payload, int64.then(|| (id, *(payload as *const u64))))
            }
            _ => return None,
        })
    }
}

/// Finds where a cdata's ctype id and payload are, on literals of the two 64-bit integer
/// types, checked against `lua_topointer`, and publishes their ids for [`decode`]. Without
/// the FFI (no such literals), or if anything differs, cdata keeps to the API.
///
/// # Safety
/// Inside a protected call, with 4 free stack slots; the stack and value layout probed.
/// Leaves the stack as it found it.
unsafe fn probe_cdata(l: *mut lua_State) {
    // SAFETY: each object is read only after its tag and address matched the API's answer,
    // and only within its header and an 8-byte payload (the literals' types).
    unsafe {
        let top = lua::lua_gettop(l);
        let chunk = c"return 5LL, 7ULL, -3LL, 5LL";
        if lua::luaL_loadstring(l, chunk.as_ptr()) != 0 || lua::lua_pcall(l, 0, 4, 0) != 0 {
            lua::lua_settop(l, top);
            return;
        }
        let head = l as *const StateHead;
        let mut ids = [0u16; 4];
        let mut ok = true;
        for (i, want) in [5u64, 7, -3i64 as u64, 5].into_iter().enumerate() {
            let idx = top + 1 + i as c_int;
            let tv = *(*head).base.add(idx as usize - 1);
            let p = (tv & GCV_MASK) as usize;
            ok &= lua::lua_type(l, idx) == capi::LUA_TCDATA
                && itype(tv) == TCDATA
                && p + CDATA_PAYLOAD_OFFSET == lua::lua_topointer(l, idx) as usize
                && *((p + CDATA_PAYLOAD_OFFSET) as *const u64) == want;
            if !ok {
                break;
            }
            ids[i] = *((p + CDATA_CTYPEID_OFFSET) as *const u16);
        }
        let [int64, uint64, int64_again, same_literal] = ids;
        // two literals of one type share its id, the other type has another, neither is 0
        if ok
            && int64 == int64_again
            && int64 == same_literal
            && int64 != uint64
            && int64 != 0
            && uint64 != 0
        {
            INT64_IDS.store(u32::from(int64) << 16 | u32::from(uint64), Ordering::Relaxed);
        }
        lua::lua_settop(l, top);
    }
}

/// Checks the layout against the API on values of every kind this module decodes, read at
/// positive and negative indices; returns the index of the string length's offset.
///
/// # Safety
/// Inside a protected call. Leaves the stack as it found it.
pub(crate) unsafe fn probe(l: *mut lua_State) -> Option<usize> {
    if cfg!(not(target_pointer_width = "64")) {
        return None;
    }
    // SAFETY: reserves the slots the probe pushes (about 14).
    unsafe { capi::check_stack(l, 20) };
    // SAFETY: `base` and `top` are read from the head of a `lua_State`, larger than
    // `StateHead` in any LuaJIT; only slots between them are read, and an object is only
    // read once its tag and address matched the API's answer for it.
    unsafe {
        let top = lua::lua_gettop(l);
        let found = probe_values(l);
        lua::lua_settop(l, top);
        found
    }
}

unsafe fn probe_values(l: *mut lua_State) -> Option<usize> {
    // SAFETY: see `probe`; the pushes are within what `probe` reserved.
    unsafe {
        let first = lua::lua_gettop(l) + 1;
        lua::lua_pushnumber(l, -1.5e300);
        lua::lua_pushboolean(l, 1);
        lua::lua_pushboolean(l, 0);
        lua::lua_pushnil(l);
        lua::lua_createtable(l, 0, 0);
        lua::lua_pushcfunction(l, capi::noop);
        if lua::luaL_loadstring(l, c"return".as_ptr()) != 0 {
            return None;
        }
        lua::lua_pushthread(l);
        let last = lua::lua_gettop(l);
        // (a raw pointer: the API moves `top` while the probe reads)
        let head = l as *const StateHead;
        let (base, top) = ((*head).base, (*head).top);
        let aligned = |p: *const u64| !p.is_null() && (p as usize).is_multiple_of(8);
        // (addresses, not pointer offsets: until checked, `base` and `top` may be anything)
        let slots = (top as isize).wrapping_sub(base as isize) / 8;
        if !aligned(base) || !aligned(top) || slots != last as isize {
            return None;
        }
        let tags = [TFALSE, TTRUE, TFALSE, TNIL, TTAB, TFUNC, TFUNC, TTHREAD];
        for (i, idx) in (first..=last).enumerate() {
            let tv = *base.add(idx as usize - 1);
            let itype = ((tv as i64) >> 47) as u32;
            let ok = match i {
                0 => itype < TISNUM && f64::from_bits(tv) == lua::lua_tonumber(l, idx),
                1..=3 => itype == tags[i],
                _ => {
                    itype == tags[i]
                        && (tv & GCV_MASK) as usize == lua::lua_topointer(l, idx) as usize
                }
            };
            if !ok {
                return None;
            }
        }
        // the function id tells a Lua function from a C one
        let ffid = |idx: c_int| {
            *(((*base.add(idx as usize - 1)) & GCV_MASK) as usize as *const u8).add(FFID_OFFSET)
        };
        if ffid(first + 5) == 0 || ffid(first + 6) != 0 {
            return None;
        }
        // strings: the offset of the length both strings agree on, the characters after
        capi::push_bytes(l, b"");
        capi::push_bytes(l, b"hotreload: a probe of the string layout");
        let mut agree = [true; 2];
        for idx in [-2, -1] {
            let mut len = 0usize;
            let chars = lua::lua_tolstring(l, idx, &mut len) as usize;
            let tv = *(*head).top.offset(idx as isize);
            let p = (tv & GCV_MASK) as usize;
            if ((tv as i64) >> 47) as u32 != TSTR || chars != p + STR_DATA_OFFSET {
                return None;
            }
            for (ok, off) in agree.iter_mut().zip(STR_LEN_OFFSETS) {
                *ok &= *((p + off) as *const u32) as usize == len;
            }
        }
        let found = agree.iter().position(|&ok| ok)?;
        let len_offset = STR_LEN_OFFSETS[found];
        // and the reader agrees with `access::read`'s API path on every slot, both ways
        let all = lua::lua_gettop(l);
        let same = (first..=all).all(|idx| {
            let from_api = value::read_by_api(l, idx);
            let at = |i| read_with(l, i, len_offset);
            at(idx) == Some(from_api) && at(idx - all - 1) == Some(from_api)
        });
        if !(same && probe_functions(l, len_offset)) {
            return None;
        }
        probe_cdata(l);
        Some(found)
    }
}

/// Upvalue cells and their values read in place agree with the API (`cells::probe`), a C
/// function has no cells to read in place, and a function's environment read in place is
/// the one `lua_getfenv` gives. Reads with the layout found so far (`len_offset`), not yet
/// published.
unsafe fn probe_functions(l: *mut lua_State, len_offset: usize) -> bool {
    let read = |idx| {
        // SAFETY: the probe's own slots, with the layout being checked.
        unsafe { read_with(l, idx, len_offset) }
    };
    let with =
        Probe { layout: &CELLS, read, push, is_object: Raw::is_object, c_function_is_object: true };
    // SAFETY: see `probe`; the closure stays on the stack while its cells are read.
    unsafe {
        let Some((f, p)) = cells::probe(l, &with) else { return false };
        // the C function in cell 4 has no cells to read in place
        lua::lua_getupvalue(l, f, 4);
        let native = matches!(read_with(l, -1, len_offset), Some(Val::CFn(_)));
        lua::lua_getfenv(l, f);
        let env = lua::lua_topointer(l, -1) as usize;
        lua::lua_pop(l, 2);
        native && env != 0 && env_of(p) == env
    }
}
