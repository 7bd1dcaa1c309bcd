//! Loading a new version the way `require` does (through `package.searchers`, or
//! `package.loaders` on LuaJIT), but in isolation: `package.loaded[name]` and every global the
//! chunk assigns are put back afterwards, success or not, and the assignments are handed to
//! the planner instead. Until `apply`, the running program cannot tell a reload started.

use std::os::raw::c_int;

use mlua::ffi as lua;

use super::capture;
use super::require::{copy_table, global_delta, push_searchers};
use crate::vm::capi::{self, lua_State};

/// Why no new version could be produced.
pub enum LoadError {
    NotFound(String),
    /// A searcher or the chunk raised (syntax or runtime error): Lua's own message.
    Failed(String),
    /// Native modules have no Lua code to merge.
    Native,
}

/// Stack positions of what `run` produced.
pub struct Loaded {
    /// The new version's value (what `require` would store).
    pub value: c_int,
    /// Table of the globals the chunk assigned: key -> new value.
    pub delta: c_int,
}

/// Pushes the loader and its extra value (the file name on 5.4) for `name`, unwrapping the
/// loader `capture` put around it.
///
/// # Safety
/// Inside `protect`; a few free stack slots. Runs searchers (user code) under protection.
pub unsafe fn find_loader(l: *mut lua_State, name: &[u8]) -> Result<(), LoadError> {
    // SAFETY: plain stack work; searchers run under lua_pcall.
    unsafe {
        let top = lua::lua_gettop(l);
        let searchers = push_searchers(l);
        if searchers == 0 {
            lua::lua_settop(l, top);
            return Err(LoadError::Failed("'package.searchers' must be a table".into()));
        }
        let mut tried = String::new();
        let mut i = 1;
        loop {
            if lua::lua_rawgeti(l, searchers, i) == lua::LUA_TNIL {
                break;
            }
            capi::push_bytes(l, name);
            if lua::lua_pcall(l, 1, 2, 0) != lua::LUA_OK {
                let message = capi::describe(l, -1);
                lua::lua_settop(l, top);
                return Err(LoadError::Failed(message));
            }
            match lua::lua_type(l, -2) {
                lua::LUA_TFUNCTION => {
                    capture::unwrap_loader(l, -2);
                    if lua::lua_iscfunction(l, -2) != 0 {
                        lua::lua_settop(l, top);
                        return Err(LoadError::Native);
                    }
                    // keep loader and extra, drop the searchers table
                    lua::lua_remove(l, searchers);
                    return Ok(());
                }
                lua::LUA_TSTRING => {
                    let message = capi::describe(l, -2);
                    if !message.starts_with('\n') {
                        tried.push_str("\n\t");
                    }
                    tried.push_str(&message);
                }
                _ => {}
            }
            lua::lua_pop(l, 2);
            i += 1;
        }
        lua::lua_settop(l, top);
        Err(LoadError::NotFound(format!(
            "module '{}' not found:{}",
            String::from_utf8_lossy(name),
            tried
        )))
    }
}

/// Source text to reload a module from instead of its file (online patching).
pub struct Source {
    pub text: Vec<u8>,
    /// Lua's chunk name (`@path` or `=name`); `=<module name>` when not given.
    pub chunkname: Option<Vec<u8>>,
}

/// First byte of every precompiled chunk (Lua's `LUA_SIGNATURE`, LuaJIT's `\x1bLJ`).
const BYTECODE_MARK: u8 = 0x1b;

/// Compiles `src` and pushes it with its extra value (the chunk name without its `@`/`=`), as
/// `find_loader` pushes a loader. Precompiled bytecode is refused unless `binary`.
///
/// # Safety
/// Inside `protect`; a few free stack slots.
pub unsafe fn load_source(
    l: *mut lua_State,
    name: &[u8],
    src: &Source,
    binary: bool,
) -> Result<(), LoadError> {
    if !binary && src.text.first() == Some(&BYTECODE_MARK) {
        return Err(LoadError::Failed(
            "the source is precompiled bytecode, refused unless the reload is given \
             {binary = true}"
                .into(),
        ));
    }
    let chunkname = match &src.chunkname {
        Some(c) => c.clone(),
        None => [b"=".as_slice(), name].concat(),
    };
    let Ok(c_name) = std::ffi::CString::new(chunkname) else {
        return Err(LoadError::Failed("the chunk name contains a zero byte".into()));
    };
    let mode = if binary { c"bt" } else { c"t" };
    // SAFETY: the buffer and name outlive the call; one value is pushed either way.
    unsafe {
        let status = lua::luaL_loadbufferx(
            l,
            src.text.as_ptr().cast(),
            src.text.len(),
            c_name.as_ptr(),
            mode.as_ptr(),
        );
        if status != lua::LUA_OK {
            let message = capi::describe(l, -1);
            lua::lua_pop(l, 1);
            return Err(LoadError::Failed(message));
        }
        let bytes = c_name.as_bytes();
        let extra = match bytes.first() {
            Some(b'@' | b'=') => bytes.get(1..).unwrap_or_default(),
            _ => bytes,
        };
        capi::push_bytes(l, extra);
    }
    Ok(())
}

/// Runs the loader at `loader` (with `extra` after it) as `require` would, then restores
/// `package.loaded[name]` and the globals. On success, returns where the new value and the
/// assigned globals are (left on the stack, above the global table).
///
/// # Safety
/// Inside `protect`; loader and extra at `loader`, `loader + 1`.
pub unsafe fn run(l: *mut lua_State, name: &[u8], loader: c_int) -> Result<Loaded, String> {
    // SAFETY: raw table operations; the loader (user code) runs under lua_pcall.
    unsafe {
        capi::check_stack(l, 12);
        capi::push_loaded(l);
        let loaded = lua::lua_gettop(l);
        capi::push_globals(l);
        let globals = loaded + 1;
        capi::push_bytes(l, name);
        lua::lua_rawget(l, loaded);
        let saved = loaded + 2;
        copy_table(l, globals);
        let before = loaded + 3;

        // As a fresh `require`: `module()` and `package.loaded[...] or {}` idioms see nothing.
        set_loaded(l, loaded, name, None);
        lua::lua_pushvalue(l, loader);
        capi::push_bytes(l, name);
        lua::lua_pushvalue(l, loader + 1);
        let ok = lua::lua_pcall(l, 2, 1, 0) == lua::LUA_OK;
        let value = loaded + 4;
        if ok && lua::lua_type(l, value) == lua::LUA_TNIL {
            // A chunk that returns nothing may have stored itself; else `require` stores true.
            lua::lua_pop(l, 1);
            capi::push_bytes(l, name);
            if lua::lua_rawget(l, loaded) == lua::LUA_TNIL {
                lua::lua_pop(l, 1);
                lua::lua_pushboolean(l, 1);
            }
        }
        set_loaded(l, loaded, name, Some(saved));
        let delta = global_delta(l, globals, before, true);
        if !ok {
            return Err(capi::describe(l, value));
        }
        Ok(Loaded { value, delta })
    }
}

unsafe fn set_loaded(l: *mut lua_State, loaded: c_int, name: &[u8], value: Option<c_int>) {
    // SAFETY: raw set on `_LOADED`.
    unsafe {
        capi::push_bytes(l, name);
        match value {
            Some(v) => lua::lua_pushvalue(l, v),
            None => lua::lua_pushnil(l),
        }
        lua::lua_rawset(l, loaded);
    }
}
