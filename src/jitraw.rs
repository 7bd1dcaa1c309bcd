//! LuaJIT only: reads a stack slot as plain data in place, instead of through three or four
//! API calls (`lua_type`, then `lua_iscfunction`, `lua_topointer` or `lua_tolstring`).
//!
//! Why: the merge planner reads every key and value of both versions, and on LuaJIT, whose
//! compiler is fast, those calls were a fifth of the planner's instructions.
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

use std::os::raw::c_int;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::ffi::{self, Val, lua_State};

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
const GCV_MASK: u64 = (1 << 47) - 1;
/// Type tags (`itype`, the top 17 bits sign-extended): `~n` for LuaJIT's type number `n`.
const TNIL: u32 = !0;
const TFALSE: u32 = !1;
const TTRUE: u32 = !2;
const TSTR: u32 = !4;
const TTHREAD: u32 = !6;
const TFUNC: u32 = !8;
const TTAB: u32 = !11;
/// Tags below this are doubles (`LJ_TISNUM`, no dual-number mode on 64-bit targets).
const TISNUM: u32 = !13;
/// `GCfunc.ffid` (after the 10-byte `GCHeader`): 0 for a Lua function.
const FFID_OFFSET: usize = 10;
/// A `GCstr`'s characters follow its 24-byte header.
const STR_DATA_OFFSET: usize = 24;
/// Where `GCstr.len` may be: after `hash` (2.1 from 2020 on, with `sid`), or before it.
const STR_LEN_OFFSETS: [usize; 2] = [20, 16];
/// Marks a pseudo-index (`LUA_REGISTRYINDEX` and below).
const PSEUDO: c_int = -10000;

const UNKNOWN: u8 = 0;
const NO: u8 = u8::MAX;
/// 0 until probed, `NO` if reads keep to the API, else the index in `STR_LEN_OFFSETS` + 1.
static LAYOUT: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Probes the layout once per process (one process links one LuaJIT); true if reads are
/// made in place from now on.
///
/// # Safety
/// Inside a protected call (the probe allocates), with 8 free stack slots.
pub unsafe fn usable(l: *mut lua_State) -> bool {
    if LAYOUT.load(Ordering::Relaxed) == UNKNOWN {
        let off = std::env::var_os("HOTRELOAD_PORTABLE_WALK").is_some_and(|v| v != "0");
        // SAFETY: forwarded.
        let found = if off { None } else { unsafe { probe(l) } };
        let answer = found.and_then(|i| u8::try_from(i + 1).ok()).unwrap_or(NO);
        LAYOUT.store(answer, Ordering::Relaxed);
    }
    !matches!(LAYOUT.load(Ordering::Relaxed), UNKNOWN | NO)
}

/// The value at `idx` as `ffi::read` gives it, or `None` where the API must answer.
///
/// # Safety
/// `idx` must be a valid index of `l`.
#[inline]
pub unsafe fn read<'a>(l: *mut lua_State, idx: c_int) -> Option<Val<'a>> {
    let layout = LAYOUT.load(Ordering::Relaxed);
    if layout == UNKNOWN || layout == NO || idx <= PSEUDO {
        return None;
    }
    let len_offset = STR_LEN_OFFSETS[usize::from(layout - 1) & 1];
    // SAFETY: the probe checked the layout; a valid index is below `top` and, if negative,
    // at or above `base` (as `index2adr` computes it).
    unsafe {
        let head = &*(l as *const StateHead);
        let slot =
            if idx > 0 { head.base.add(idx as usize - 1) } else { head.top.offset(idx as isize) };
        if slot >= head.top {
            return Some(Val::Nil); // an acceptable index past the top: none, read as nil
        }
        decode(*slot, len_offset)
    }
}

/// A GC64 `TValue` as `ffi::read` gives it, or `None` for the kinds left to the API.
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
            _ => return None,
        })
    }
}

/// Checks the layout against the API on values of every kind this module decodes, read at
/// positive and negative indices; returns the index of the string length's offset.
///
/// # Safety
/// Inside a protected call, with 8 free stack slots. Leaves the stack as it found it.
unsafe fn probe(l: *mut lua_State) -> Option<usize> {
    if cfg!(not(target_pointer_width = "64")) {
        return None;
    }
    // SAFETY: `base` and `top` are read from the head of a `lua_State`, larger than
    // `StateHead` in any LuaJIT; only slots between them are read, and an object is only
    // read once its tag and address matched the API's answer for it.
    unsafe {
        let top = ffi::lua_gettop(l);
        let found = probe_values(l);
        ffi::lua_settop(l, top);
        found
    }
}

unsafe fn probe_values(l: *mut lua_State) -> Option<usize> {
    unsafe extern "C-unwind" fn native(_: *mut lua_State) -> c_int {
        0
    }
    // SAFETY: see `probe`; seven pushes.
    unsafe {
        let first = ffi::lua_gettop(l) + 1;
        ffi::lua_pushnumber(l, -1.5e300);
        ffi::lua_pushboolean(l, 1);
        ffi::lua_pushboolean(l, 0);
        ffi::lua_pushnil(l);
        ffi::lua_createtable(l, 0, 0);
        ffi::lua_pushcfunction(l, native);
        if ffi::luaL_loadstring(l, c"return".as_ptr()) != 0 {
            return None;
        }
        ffi::lua_pushthread(l);
        let last = ffi::lua_gettop(l);
        // (a raw pointer: the API moves `top` while the probe reads)
        let head = l as *const StateHead;
        let (base, top) = ((*head).base, (*head).top);
        let aligned = |p: *const u64| !p.is_null() && (p as usize).is_multiple_of(8);
        if !aligned(base) || !aligned(top) || top.offset_from(base) != last as isize {
            return None;
        }
        let tags = [TFALSE, TTRUE, TFALSE, TNIL, TTAB, TFUNC, TFUNC, TTHREAD];
        for (i, idx) in (first..=last).enumerate() {
            let tv = *base.add(idx as usize - 1);
            let itype = ((tv as i64) >> 47) as u32;
            let ok = match i {
                0 => itype < TISNUM && f64::from_bits(tv) == ffi::lua_tonumber(l, idx),
                1..=3 => itype == tags[i],
                _ => {
                    itype == tags[i]
                        && (tv & GCV_MASK) as usize == ffi::lua_topointer(l, idx) as usize
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
        ffi::push_bytes(l, b"");
        ffi::push_bytes(l, b"hotreload: a probe of the string layout");
        let mut agree = [true; 2];
        for idx in [-2, -1] {
            let mut len = 0usize;
            let chars = ffi::lua_tolstring(l, idx, &mut len) as usize;
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
        // and the public reader agrees with `ffi::read`'s API path on every slot, both ways
        LAYOUT.store(found as u8 + 1, Ordering::Relaxed);
        let all = ffi::lua_gettop(l);
        let same = (first..=all).all(|idx| {
            let from_api = ffi::read_by_api(l, idx);
            read(l, idx) == Some(from_api) && read(l, idx - all - 1) == Some(from_api)
        });
        LAYOUT.store(UNKNOWN, Ordering::Relaxed);
        same.then_some(found)
    }
}
