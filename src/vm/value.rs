//! A value of the Lua stack as plain Rust data, and how the C API reads one: what the
//! in-place readers (`layout`) must agree with, and what `access` falls back to.

use std::os::raw::c_int;

use mlua::ffi::*;

#[cfg(feature = "luajit")]
use super::capi::LUA_TCDATA;

/// A stack slot read as plain data. Strings borrow the Lua string, so a `Val` is only valid
/// while that value stays on the stack.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Val<'a> {
    Nil,
    Bool(bool),
    #[cfg_attr(feature = "luajit", allow(dead_code))]
    Int(i64),
    Num(f64),
    Str(&'a [u8]),
    Light(usize),
    Table(usize),
    LuaFn(usize),
    CFn(usize),
    Userdata(usize),
    Thread(usize),
    #[cfg_attr(not(feature = "luajit"), allow(dead_code))]
    /// LuaJIT's cdata: its identity (`lua_topointer`, the payload's address) and, for a
    /// 64-bit integer (`5LL`, `5ULL`) where values are read in place, its type and value.
    Cdata(usize, Option<Scalar>),
}

/// The content of an `int64_t` or `uint64_t` cdata: its ctype id and its bits.
pub type Scalar = (u16, u64);

impl Val<'_> {
    /// Tables and Lua functions: the values a merge walks into.
    pub fn object(self) -> Option<usize> {
        match self {
            Val::Table(p) | Val::LuaFn(p) => Some(p),
            _ => None,
        }
    }
}

/// `read` through the C API alone.
///
/// # Safety
/// As `read`.
pub unsafe fn read_by_api<'a>(l: *mut lua_State, idx: c_int) -> Val<'a> {
    // SAFETY: the caller guarantees a valid index; every accessor below matches the type tag.
    unsafe {
        match lua_type(l, idx) {
            LUA_TBOOLEAN => Val::Bool(lua_toboolean(l, idx) != 0),
            LUA_TNUMBER => number(l, idx),
            LUA_TSTRING => {
                let mut len = 0usize;
                let p = lua_tolstring(l, idx, &mut len);
                Val::Str(std::slice::from_raw_parts(p.cast::<u8>(), len))
            }
            LUA_TLIGHTUSERDATA => Val::Light(lua_touserdata(l, idx) as usize),
            LUA_TTABLE => Val::Table(lua_topointer(l, idx) as usize),
            LUA_TFUNCTION if lua_iscfunction(l, idx) != 0 => {
                Val::CFn(lua_topointer(l, idx) as usize)
            }
            LUA_TFUNCTION => Val::LuaFn(lua_topointer(l, idx) as usize),
            LUA_TUSERDATA => Val::Userdata(lua_topointer(l, idx) as usize),
            LUA_TTHREAD => Val::Thread(lua_topointer(l, idx) as usize),
            #[cfg(feature = "luajit")]
            LUA_TCDATA => Val::Cdata(lua_topointer(l, idx) as usize, None),
            _ => Val::Nil,
        }
    }
}

#[cfg(not(feature = "luajit"))]
unsafe fn number<'a>(l: *mut lua_State, idx: c_int) -> Val<'a> {
    // SAFETY: the caller checked that `idx` holds a number.
    unsafe {
        if lua_isinteger(l, idx) != 0 {
            Val::Int(lua_tointeger(l, idx))
        } else {
            Val::Num(lua_tonumber(l, idx))
        }
    }
}

#[cfg(feature = "luajit")]
unsafe fn number<'a>(l: *mut lua_State, idx: c_int) -> Val<'a> {
    // SAFETY: the caller checked that `idx` holds a number; LuaJIT has no integer subtype.
    Val::Num(unsafe { lua_tonumber(l, idx) })
}
