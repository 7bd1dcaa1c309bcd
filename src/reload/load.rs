//! Loading a new version the way `require` does (through `package.searchers`, or
//! `package.loaders` on LuaJIT), but in isolation: `package.loaded[name]` and every global the
//! chunk assigns are put back afterwards, success or not, and the assignments are handed to
//! the planner instead. Until `apply`, the running program cannot tell a reload started.

use std::os::raw::c_int;

use crate::capture;
use crate::ffi::{self, lua_State};

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
    /// The global table.
    pub globals: c_int,
}

/// Pushes the loader and its extra value (the file name on 5.4) for `name`, unwrapping the
/// loader `capture` put around it.
///
/// # Safety
/// Inside `protect`; a few free stack slots. Runs searchers (user code) under protection.
pub unsafe fn find_loader(l: *mut lua_State, name: &[u8]) -> Result<(), LoadError> {
    // SAFETY: plain stack work; searchers run under lua_pcall.
    unsafe {
        let top = ffi::lua_gettop(l);
        let searchers = push_searchers(l);
        if searchers == 0 {
            ffi::lua_settop(l, top);
            return Err(LoadError::Failed("'package.searchers' must be a table".into()));
        }
        let mut tried = String::new();
        let mut i = 1;
        loop {
            if ffi::lua_rawgeti(l, searchers, i) == ffi::LUA_TNIL {
                break;
            }
            ffi::push_bytes(l, name);
            if ffi::lua_pcall(l, 1, 2, 0) != ffi::LUA_OK {
                let message = ffi::describe(l, -1);
                ffi::lua_settop(l, top);
                return Err(LoadError::Failed(message));
            }
            match ffi::lua_type(l, -2) {
                ffi::LUA_TFUNCTION => {
                    capture::unwrap_loader(l, -2);
                    if ffi::lua_iscfunction(l, -2) != 0 {
                        ffi::lua_settop(l, top);
                        return Err(LoadError::Native);
                    }
                    // keep loader and extra, drop the searchers table
                    ffi::lua_remove(l, searchers);
                    return Ok(());
                }
                ffi::LUA_TSTRING => {
                    let message = ffi::describe(l, -2);
                    if !message.starts_with('\n') {
                        tried.push_str("\n\t");
                    }
                    tried.push_str(&message);
                }
                _ => {}
            }
            ffi::lua_pop(l, 2);
            i += 1;
        }
        ffi::lua_settop(l, top);
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
        let status = ffi::luaL_loadbufferx(
            l,
            src.text.as_ptr().cast(),
            src.text.len(),
            c_name.as_ptr(),
            mode.as_ptr(),
        );
        if status != ffi::LUA_OK {
            let message = ffi::describe(l, -1);
            ffi::lua_pop(l, 1);
            return Err(LoadError::Failed(message));
        }
        let bytes = c_name.as_bytes();
        let extra = match bytes.first() {
            Some(b'@' | b'=') => bytes.get(1..).unwrap_or_default(),
            _ => bytes,
        };
        ffi::push_bytes(l, extra);
    }
    Ok(())
}

/// Pushes `package.searchers` (or `package.loaders`) and returns its index, 0 if missing
/// (then nothing is pushed).
///
/// # Safety
/// Three free stack slots.
pub unsafe fn push_searchers(l: *mut lua_State) -> c_int {
    // SAFETY: raw reads from `_LOADED.package`.
    unsafe {
        ffi::push_loaded(l);
        ffi::push_bytes(l, b"package");
        ffi::lua_rawget(l, -2);
        ffi::lua_remove(l, -2);
        if ffi::lua_type(l, -1) != ffi::LUA_TTABLE {
            ffi::lua_pop(l, 1);
            return 0;
        }
        for field in [b"searchers".as_slice(), b"loaders"] {
            ffi::push_bytes(l, field);
            if ffi::lua_rawget(l, -2) == ffi::LUA_TTABLE {
                ffi::lua_remove(l, -2);
                return ffi::lua_gettop(l);
            }
            ffi::lua_pop(l, 1);
        }
        ffi::lua_pop(l, 1);
        0
    }
}

/// Runs the loader at `loader` (with `extra` after it) as `require` would, then restores
/// `package.loaded[name]` and the globals. On success, returns where the new value, the
/// assigned globals and the global table are (all left on the stack).
///
/// # Safety
/// Inside `protect`; loader and extra at `loader`, `loader + 1`.
pub unsafe fn run(l: *mut lua_State, name: &[u8], loader: c_int) -> Result<Loaded, String> {
    // SAFETY: raw table operations; the loader (user code) runs under lua_pcall.
    unsafe {
        ffi::luaL_checkstack(l, 12, c"hotreload: Lua stack exhausted".as_ptr());
        ffi::push_loaded(l);
        let loaded = ffi::lua_gettop(l);
        ffi::push_globals(l);
        let globals = loaded + 1;
        ffi::push_bytes(l, name);
        ffi::lua_rawget(l, loaded);
        let saved = loaded + 2;
        copy_table(l, globals);
        let before = loaded + 3;

        // As a fresh `require`: `module()` and `package.loaded[...] or {}` idioms see nothing.
        set_loaded(l, loaded, name, None);
        ffi::lua_pushvalue(l, loader);
        ffi::push_bytes(l, name);
        ffi::lua_pushvalue(l, loader + 1);
        let ok = ffi::lua_pcall(l, 2, 1, 0) == ffi::LUA_OK;
        let value = loaded + 4;
        if ok && ffi::lua_type(l, value) == ffi::LUA_TNIL {
            // A chunk that returns nothing may have stored itself; else `require` stores true.
            ffi::lua_pop(l, 1);
            ffi::push_bytes(l, name);
            if ffi::lua_rawget(l, loaded) == ffi::LUA_TNIL {
                ffi::lua_pop(l, 1);
                ffi::lua_pushboolean(l, 1);
            }
        }
        set_loaded(l, loaded, name, Some(saved));
        let delta = global_delta(l, globals, before, true);
        if !ok {
            return Err(ffi::describe(l, value));
        }
        Ok(Loaded { value, delta, globals })
    }
}

unsafe fn set_loaded(l: *mut lua_State, loaded: c_int, name: &[u8], value: Option<c_int>) {
    // SAFETY: raw set on `_LOADED`.
    unsafe {
        ffi::push_bytes(l, name);
        match value {
            Some(v) => ffi::lua_pushvalue(l, v),
            None => ffi::lua_pushnil(l),
        }
        ffi::lua_rawset(l, loaded);
    }
}

/// Pushes a shallow raw copy of the table at `t`.
///
/// # Safety
/// Inside `protect` (allocates); `t` absolute.
pub unsafe fn copy_table(l: *mut lua_State, t: c_int) {
    // SAFETY: raw traversal of `t` while writing only to the copy.
    unsafe {
        ffi::lua_createtable(l, 0, 64);
        let copy = ffi::lua_gettop(l);
        ffi::lua_pushnil(l);
        while ffi::lua_next(l, t) != 0 {
            ffi::lua_pushvalue(l, -2);
            ffi::lua_insert(l, -2);
            ffi::lua_rawset(l, copy);
        }
    }
}

/// Pushes a table of the keys of `globals` whose value differs from `before` (key -> new
/// value). With `restore`, also puts every global back as it was in `before`.
///
/// # Safety
/// Inside `protect` (allocates); absolute indices.
pub unsafe fn global_delta(
    l: *mut lua_State,
    globals: c_int,
    before: c_int,
    restore: bool,
) -> c_int {
    // SAFETY: each traversal writes only to a table other than the one it walks.
    unsafe {
        ffi::lua_createtable(l, 0, 4);
        let delta = ffi::lua_gettop(l);
        ffi::lua_pushnil(l);
        while ffi::lua_next(l, globals) != 0 {
            ffi::lua_pushvalue(l, -2);
            ffi::lua_rawget(l, before);
            if ffi::lua_rawequal(l, -1, -2) == 0 {
                ffi::lua_pushvalue(l, -3);
                ffi::lua_pushvalue(l, -3);
                ffi::lua_rawset(l, delta);
            }
            ffi::lua_pop(l, 2);
        }
        if restore {
            ffi::lua_pushnil(l);
            while ffi::lua_next(l, delta) != 0 {
                ffi::lua_pop(l, 1);
                ffi::lua_pushvalue(l, -1);
                ffi::lua_pushvalue(l, -1);
                ffi::lua_rawget(l, before);
                ffi::lua_rawset(l, globals);
            }
            // globals the chunk set to nil
            ffi::lua_pushnil(l);
            while ffi::lua_next(l, before) != 0 {
                ffi::lua_pushvalue(l, -2);
                if ffi::lua_rawget(l, globals) == ffi::LUA_TNIL {
                    ffi::lua_pushvalue(l, -3);
                    ffi::lua_pushvalue(l, -3);
                    ffi::lua_rawset(l, globals);
                }
                ffi::lua_pop(l, 2);
            }
        }
        delta
    }
}
