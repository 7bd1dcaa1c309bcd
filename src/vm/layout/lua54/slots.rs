//! Lua 5.4 only: reads a stack slot as plain data in place, instead of through two or three
//! API calls (`lua_type`, then `lua_isinteger`, `lua_topointer` or `lua_tolstring`) — the
//! counterpart of `luajit/slots` for LuaJIT.
//!
//! Why: the merge planner reads every key and value of both versions, and those calls were a
//! large share of its instructions (`make profile`; figures in `bench/RESULTS.md`).
//!
//! What it relies on: the layout of `TValue`, `TString` and the head of `lua_State` and
//! `CallInfo` (`lobject.h`, `lstate.h`), identical from Lua 5.4.0 to 5.4.9 (5.4.6 made the
//! stack pointers a union whose pointer member is the one in use outside a reallocation).
//! That is not Lua's API, so [`probe`] checks it against the API on values of every kind when
//! a state opens the module; if any answer differs, reads keep to the API.
//! `HOTRELOAD_PORTABLE_WALK=1` in the environment forces that too.
//!
//! What it reads: nil, booleans, numbers, strings, tables, Lua closures and threads. Anything
//! else (userdata, C functions, light userdata) and pseudo-indices go through the API.
//!
//! The VM walk also reads a Lua closure's upvalue cells in place (`LClosure`, `UpVal`; see
//! `cells`). Values, the stack head and in-place pushes are `lua54/tables`'s.

use std::os::raw::{c_char, c_int};

use mlua::ffi as lua;

use super::tables::{self, COLLECTABLE, StateHead, TValue, VNUMINT};
use crate::vm::capi::{self, lua_State};
use crate::vm::layout;
use crate::vm::layout::cells::{self, Layout, Probe};
use crate::vm::value::{self, Val};

/// Type tags with their variant bits and the collectable bit (`lobject.h`, `makevariant`).
const VNIL: u8 = 0x00;
const VFALSE: u8 = 0x01;
const VTRUE: u8 = 0x11;
const VNUMFLT: u8 = 0x13;
const VSHRSTR: u8 = 0x04 | COLLECTABLE;
const VLNGSTR: u8 = 0x14 | COLLECTABLE;
const VTABLE: u8 = 0x05 | COLLECTABLE;
const VLCL: u8 = 0x06 | COLLECTABLE;
const VTHREAD: u8 = 0x08 | COLLECTABLE;
/// `LClosure`: its upvalue count and cells (`upvals`); `UpVal.v`: where the cell's value is.
const CELLS: Layout = Layout {
    count: 10,
    cells: 32,
    value: 16,
    proto_ok,
    name: upvalue_name,
    source: chunk_name,
    proto: proto_of,
};
/// `LClosure.p`: its prototype; `Proto.upvalues`: the upvalue descriptions (16 bytes each,
/// the name first).
const FN_PROTO_OFFSET: usize = 24;
const PROTO_UPVALUES_OFFSET: usize = 80;
const UPVALDESC_SIZE: usize = 16;
/// `TString.tt` of a short string (the header's tag has no collectable bit).
const TSHRSTR: u8 = 0x04;
/// `TString`: the length of a short string, of a long one, and the characters.
const SHRLEN_OFFSET: usize = 11;
const LNGLEN_OFFSET: usize = 16;
const CONTENTS_OFFSET: usize = 24;
/// Marks a pseudo-index (`LUA_REGISTRYINDEX` and upvalue indices below it).
const PSEUDO: c_int = lua::LUA_REGISTRYINDEX;

static LAYOUT: layout::Probed = layout::Probed::new();

/// Probes the layout once per process (one process links one Lua); true if reads are made
/// in place from now on.
///
/// # Safety
/// Inside a protected call (the probe allocates and reserves its stack).
pub unsafe fn usable(l: *mut lua_State) -> bool {
    // SAFETY: forwarded.
    LAYOUT.get(|| unsafe { probe(l) })
}

/// The value at `idx` as `access::read` gives it, or `None` where the API must answer.
///
/// # Safety
/// `idx` must be a valid index of `l`.
#[inline]
pub unsafe fn read<'a>(l: *mut lua_State, idx: c_int) -> Option<Val<'a>> {
    if !LAYOUT.found() {
        return None;
    }
    // SAFETY: forwarded.
    unsafe { read_unchecked(l, idx) }
}

/// `read` whatever the probe said.
///
/// # Safety
/// As `read`, and the layout is the probed one.
#[inline]
unsafe fn read_unchecked<'a>(l: *mut lua_State, idx: c_int) -> Option<Val<'a>> {
    if idx <= PSEUDO {
        return None;
    }
    // SAFETY: the probe checked the layout; a valid positive index is above the current
    // function (`ci->func`), a negative one below `top` (as `index2value` computes them).
    unsafe {
        let head = &*(l as *const StateHead);
        let slot = if idx > 0 {
            let func = *head.ci;
            let s = func.wrapping_add(idx as usize);
            if s >= head.top {
                return Some(Val::Nil); // an acceptable index past the top: none, read as nil
            }
            s
        } else {
            head.top.wrapping_offset(idx as isize)
        };
        decode(*slot)
    }
}

/// Drops the values above the index `idx` (positive, at or below the top), as `lua_settop`
/// would (none is a to-be-closed variable: the engine makes none); false where the API must
/// do it (no layout, or a top to raise).
///
/// # Safety
/// `idx` is an index of the running function; the values dropped are the caller's own.
#[inline]
pub unsafe fn drop_to(l: *mut lua_State, idx: c_int) -> bool {
    if !LAYOUT.found() || idx < 0 {
        return false;
    }
    // SAFETY: the probe checked where `ci->func` and `top` are; the new top is not above
    // the old.
    unsafe {
        let head = l as *mut StateHead;
        let top = (*(*head).ci).wrapping_add(idx as usize + 1) as *mut TValue;
        if top > (*head).top {
            return false;
        }
        (*head).top = top;
    }
    true
}

/// A value read in place.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Raw(TValue);

impl Raw {
    /// A table, a Lua or C closure, a full userdata or a thread: a value the walk must look
    /// at (not a light C function: it has no upvalues).
    pub fn is_object(self) -> bool {
        tables::wanted(self.0.tt)
    }
}

/// The upvalue cells of a Lua closure, read in place.
pub type Upvalues = cells::Upvalues<Raw>;

/// The upvalues of the function at `idx` if it is a Lua closure and reads are in place.
///
/// # Safety
/// `idx` must be a valid index of `l`.
pub unsafe fn upvalues(l: *mut lua_State, idx: c_int) -> Option<Upvalues> {
    // SAFETY: forwarded; a Lua closure's header and cell array are read as probed.
    unsafe {
        let Some(Val::LuaFn(p)) = read(l, idx) else { return None };
        Some(Upvalues::of(p, &CELLS))
    }
}

/// The address of the prototype of the Lua closure at `p`.
///
/// # Safety
/// `p` is a live Lua closure; the layout was probed.
unsafe fn proto_of(p: usize) -> usize {
    // SAFETY: as documented.
    unsafe { *((p + FN_PROTO_OFFSET) as *const usize) }
}

/// Asks the CPU to fetch what the merge reads of the Lua closure at `p` after its header (see
/// `cells::Upvalues::prefetch`), where the layout was probed; nothing otherwise.
///
/// # Safety
/// `p` is a live Lua closure (a `Val::LuaFn` address `read` gave).
pub unsafe fn prefetch_function(p: usize) {
    if LAYOUT.found() {
        // SAFETY: as documented; the layout was probed.
        unsafe { Upvalues::of(p, &CELLS).prefetch() }
    }
}

/// `Proto`'s tag (`LUA_VPROTO`) and upvalue count (`sizeupvalues`).
const VPROTO: u8 = 0x0a;
const PROTO_SIZEUPVALUES_OFFSET: usize = 16;

/// Whether the Lua closure at `p`, with `count` upvalues, has a prototype where the layout
/// says (checked by the probe before any name is read).
///
/// # Safety
/// `p` is a live Lua closure whose cells the probe checked.
unsafe fn proto_ok(p: usize, count: c_int) -> bool {
    // SAFETY: `p` is within the closure; the prototype is only read once it is a plausible
    // object address, and only its header.
    unsafe {
        let proto = *((p + FN_PROTO_OFFSET) as *const usize);
        proto != 0
            && proto.is_multiple_of(8)
            && *((proto + 8) as *const u8) == VPROTO
            && *((proto + PROTO_SIZEUPVALUES_OFFSET) as *const c_int) == count
    }
}

/// The name of upvalue `n` (from 1) of the Lua closure at `p`, `""` if it was stripped
/// (where `lua_getupvalue` says `"(no name)"`).
///
/// # Safety
/// `p` is a live Lua closure with at least `n` upvalues; the layout was probed (or is being
/// probed, past the checks of the closure's cells).
unsafe fn upvalue_name(p: usize, n: c_int) -> &'static [u8] {
    // SAFETY: a closure's prototype describes each of its upvalues; a name is a string.
    unsafe {
        let proto = *((p + FN_PROTO_OFFSET) as *const usize);
        let descs = *((proto + PROTO_UPVALUES_OFFSET) as *const usize);
        let name = *((descs + UPVALDESC_SIZE * (n as usize - 1)) as *const usize);
        if name == 0 {
            return b"";
        }
        let len = if *((name + 8) as *const u8) == TSHRSTR {
            usize::from(*((name + SHRLEN_OFFSET) as *const u8))
        } else {
            *((name + LNGLEN_OFFSET) as *const usize)
        };
        std::slice::from_raw_parts((name + CONTENTS_OFFSET) as *const u8, len)
    }
}

/// `Proto.source`: the string naming the chunk (none in stripped bytecode).
const PROTO_SOURCE_OFFSET: usize = 112;

/// The name of the chunk of the Lua closure at `p`: the characters of its prototype's
/// `source`, which `lua_getinfo` gives as `source` (`getstr`); null if it has none.
///
/// # Safety
/// As `upvalue_name`.
unsafe fn chunk_name(p: usize) -> *const c_char {
    // SAFETY: a closure's prototype; its source, if any, is a string.
    unsafe {
        let proto = *((p + FN_PROTO_OFFSET) as *const usize);
        let source = *((proto + PROTO_SOURCE_OFFSET) as *const usize);
        if source == 0 {
            return std::ptr::null();
        }
        (source + CONTENTS_OFFSET) as *const c_char
    }
}

/// Pushes a value read in place, as `lua_pushvalue` would (`setobj2s`, `api_incr_top`).
///
/// # Safety
/// A free stack slot (reserved with `lua_checkstack`); `v` is still alive.
pub unsafe fn push(l: *mut lua_State, v: Raw) {
    // SAFETY: forwarded (the layout of the stack top is `lua54/tables`'s, probed there too).
    unsafe { tables::push(l, v.0) }
}

/// A `TValue` as `access::read` gives it, or `None` for the kinds left to the API.
///
/// # Safety
/// `v` is a live value and the probe checked the layout.
unsafe fn decode<'a>(v: TValue) -> Option<Val<'a>> {
    let p = v.value as usize;
    // SAFETY: `p` is the object the tag says; the fields read are in its header.
    unsafe {
        Some(match v.tt {
            VNIL => Val::Nil,
            VFALSE => Val::Bool(false),
            VTRUE => Val::Bool(true),
            VNUMINT => Val::Int(v.value as i64),
            VNUMFLT => Val::Num(f64::from_bits(v.value)),
            VSHRSTR => {
                let len = usize::from(*((p + SHRLEN_OFFSET) as *const u8));
                Val::Str(std::slice::from_raw_parts((p + CONTENTS_OFFSET) as *const u8, len))
            }
            VLNGSTR => {
                let len = *((p + LNGLEN_OFFSET) as *const usize);
                Val::Str(std::slice::from_raw_parts((p + CONTENTS_OFFSET) as *const u8, len))
            }
            VTABLE => Val::Table(p),
            VLCL => Val::LuaFn(p),
            VTHREAD => Val::Thread(p),
            _ => return None,
        })
    }
}

/// Checks the layout against the API: every kind this module decodes (and a few it leaves
/// to the API), read at positive and negative indices, must read as `value::read_by_api` has
/// them.
///
/// # Safety
/// Inside a protected call. Leaves the stack as it found it.
unsafe fn probe(l: *mut lua_State) -> bool {
    if cfg!(not(target_pointer_width = "64")) {
        return false;
    }
    // SAFETY: the head of a `lua_State` and of its `CallInfo` are larger than what is read
    // in any 5.4; a slot is only decoded once `top` and `ci->func` bracket the pushed values,
    // an object only once its tag matched the API's type, and a string's length only once
    // its characters are where `lua_tolstring` has them.
    unsafe {
        if lua::lua_version(l) != 504.0 {
            return false;
        }
        capi::check_stack(l, 20);
        let top = lua::lua_gettop(l);
        let first = top + 1;
        lua::lua_pushinteger(l, -0x1234_5678_9abc);
        lua::lua_pushnumber(l, 2.5);
        lua::lua_pushboolean(l, 1);
        lua::lua_pushboolean(l, 0);
        lua::lua_pushnil(l);
        capi::push_bytes(l, b"hotreload");
        capi::push_bytes(l, &[b'x'; 60]); // a long string (over LUAI_MAXSHORTLEN)
        lua::lua_createtable(l, 0, 0);
        lua::lua_pushthread(l);
        let ok = lua::luaL_loadstring(l, c"return".as_ptr()) == 0 && {
            lua::lua_pushcfunction(l, capi::noop);
            let last = lua::lua_gettop(l);
            let head = l as *const StateHead;
            let func = *(*head).ci;
            let bracketed = func.wrapping_add(last as usize + 1) == (*head).top;
            let tags =
                [VNUMINT, VNUMFLT, VTRUE, VFALSE, VNIL, VSHRSTR, VLNGSTR, VTABLE, VTHREAD, VLCL];
            let tagged = bracketed
                && (first..last).zip(tags).all(|(idx, tt)| (*func.add(idx as usize)).tt == tt);
            let strings = tagged
                && [first + 5, first + 6].iter().all(|&idx| {
                    let mut len = 0usize;
                    let chars = lua::lua_tolstring(l, idx, &mut len) as usize;
                    let p = (*func.add(idx as usize)).value as usize;
                    let found = if idx == first + 5 {
                        usize::from(*((p + SHRLEN_OFFSET) as *const u8))
                    } else {
                        *((p + LNGLEN_OFFSET) as *const usize)
                    };
                    chars == p + CONTENTS_OFFSET && found == len
                });
            let same = strings
                && (first..=last).all(|idx| {
                    let by_api = value::read_by_api(l, idx);
                    let agree = |v: Option<Val>| v.is_none_or(|v| v == by_api);
                    agree(read_unchecked(l, idx)) && agree(read_unchecked(l, idx - last - 1))
                })
                && (first..last).all(|idx| read_unchecked(l, idx).is_some())
                && read_unchecked(l, last).is_none();
            same && probe_upvalues(l)
        };
        lua::lua_settop(l, top);
        ok
    }
}

/// Upvalue cells and their values read in place agree with the API (`cells::probe`), and
/// a light C function is not a closure with cells to read in place. Reads with the layout
/// being probed, not yet published.
unsafe fn probe_upvalues(l: *mut lua_State) -> bool {
    let read = |idx| {
        // SAFETY: the probe's own slots, with the layout being checked.
        unsafe { read_unchecked(l, idx) }
    };
    let with = Probe {
        layout: &CELLS,
        read,
        push,
        is_object: Raw::is_object,
        c_function_is_object: false,
    };
    // SAFETY: see `probe`; the closure stays on the stack while its cells are read.
    unsafe {
        let Some((f, _)) = cells::probe(l, &with) else { return false };
        lua::lua_getupvalue(l, f, 4);
        let native = read_unchecked(l, -1).is_none();
        lua::lua_pop(l, 1);
        native
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::Lua;

    #[test]
    fn reads_agree_with_the_api_on_the_vendored_lua() {
        let lua = Lua::new();
        let values: mlua::Table = lua
            .load(
                r#"
                return { 0, -7, 1.5, 0/0, math.huge, "", "short", ("long"):rep(40), {}, true,
                  false, print, function() end, coroutine.create(print), io.stdout,
                  string.rep("\0", 3) }
                "#,
            )
            .eval()
            .unwrap();
        let n = values.raw_len() as lua::lua_Integer;
        // SAFETY: the values are pushed one above the other and read.
        unsafe {
            capi::testing::assert_raw(&lua, values, |l, failures| {
                if !probe(l) {
                    failures.push_str("the layout probe failed");
                }
                for i in 1..=n {
                    lua::lua_rawgeti(l, 1, i);
                }
                let top = lua::lua_gettop(l);
                for idx in 2..=top {
                    let by_api = value::read_by_api(l, idx);
                    for at in [idx, idx - top - 1] {
                        match read_unchecked(l, at) {
                            // NaN is not equal to itself: compare the bits
                            Some(Val::Num(a)) if matches!(by_api, Val::Num(b) if a.to_bits() == b.to_bits()) =>
                                {}
                            Some(v) if v != by_api => {
                                failures.push_str(&format!("{idx}@{at}: {v:?} vs {by_api:?}\n"))
                            }
                            _ => {}
                        }
                    }
                }
                if read_unchecked(l, top + 1) != Some(Val::Nil) {
                    failures.push_str("past the top is not nil\n");
                }
            });
        }
    }
}
