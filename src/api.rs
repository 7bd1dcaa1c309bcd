//! The Lua-facing functions: argument checks and the error convention at the boundary.
//! Misuse (wrong argument types) raises a Lua error; expected failures return
//! `nil, message`; nothing owned by Rust is alive when an error is raised.

use std::os::raw::c_int;

use crate::error::{Error, ErrorKind};
use crate::ffi::{self, lua_State};
use crate::{capture, reload, state};

/// Builds the module table: every export as a C closure over a fresh state userdata.
///
/// # Safety
/// Inside a protected call; leaves the table on the stack.
pub unsafe fn open(l: *mut lua_State, exports: &[(&std::ffi::CStr, ffi::lua_CFunction)]) -> c_int {
    // SAFETY: plain table building on a fresh table (no metamethods involved).
    unsafe {
        ffi::luaL_checkstack(l, 8, std::ptr::null());
        ffi::lua_createtable(l, 0, exports.len() as c_int + 2);
        let module = ffi::lua_gettop(l);
        state::push_new(l);
        let state = module + 1;
        for (name, f) in exports {
            ffi::lua_pushvalue(l, state);
            ffi::lua_pushcclosure(l, *f, 1);
            ffi::lua_setfield(l, module, name.as_ptr());
        }
        capture::wrap_searchers(l, state);
        ffi::lua_pop(l, 1);
        ffi::push_bytes(l, env!("CARGO_PKG_VERSION").as_bytes());
        ffi::lua_setfield(l, module, c"_VERSION".as_ptr());
        ffi::push_bytes(l, ffi::FLAVOR.as_bytes());
        ffi::lua_setfield(l, module, c"flavor".as_ptr());
        1
    }
}

/// `hotreload.reload(name [, opts])` -> module | nil, message
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn reload(l: *mut lua_State) -> c_int {
    // SAFETY: the checks raise before anything is owned; `run_reload` drops all it owns
    // before `finish` may raise.
    unsafe {
        ffi::luaL_checktype(l, 1, ffi::LUA_TSTRING);
        if ffi::lua_type(l, 2) > ffi::LUA_TNIL {
            ffi::luaL_checktype(l, 2, ffi::LUA_TTABLE);
        }
        let outcome = run_reload(l);
        finish(l, outcome)
    }
}

unsafe fn run_reload(l: *mut lua_State) -> Result<c_int, Error> {
    // SAFETY: argument 1 is a string (checked); its bytes stay valid during the call.
    unsafe {
        let mut len = 0usize;
        let p = ffi::lua_tolstring(l, 1, &mut len);
        let name = std::slice::from_raw_parts(p.cast::<u8>(), len);
        let state = ffi::lua_upvalueindex(1);
        let Some(cell) = state::get(l, state) else {
            return Err(Error::new(ErrorKind::Internal, name, "the Lua state is closing"));
        };
        reload::reload(l, cell, state, name).map(|_counts| 1)
    }
}

/// Turns an outcome into the Lua convention: `n` results, `nil, message`, or a raise.
unsafe fn finish(l: *mut lua_State, outcome: Result<c_int, Error>) -> c_int {
    match outcome {
        Ok(n) => n,
        Err(e) => {
            let raises = e.raises();
            let message = e.to_string();
            drop(e);
            // SAFETY: the message is copied into Lua and dropped before lua_error unwinds.
            unsafe {
                if !raises {
                    ffi::lua_pushnil(l);
                }
                ffi::push_bytes(l, message.as_bytes());
                drop(message);
                if raises {
                    ffi::lua_error(l);
                }
            }
            2
        }
    }
}
