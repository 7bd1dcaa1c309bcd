//! Loading a new version the way `require` does (through `package.searchers`, or
//! `package.loaders` on LuaJIT), but in isolation: `package.loaded[name]` and every global the
//! chunk assigns are put back afterwards, success or not, and the assignments are handed to
//! the planner instead. Until `apply`, the running program cannot tell a reload started.

use std::os::raw::c_int;

use mlua::ffi as lua;

use super::capture;
use super::require::{copy_table, global_delta, push_searchers};
use crate::vm::access::{self, Val};
use crate::vm::capi::{self, lua_State};
use crate::vm::scratch::{self, Compiled};

/// Why no new version could be produced.
pub enum LoadError {
    NotFound(String),
    /// A searcher or the chunk raised (syntax or runtime error): Lua's own message.
    Failed(String),
    /// The file compiled ahead has a syntax error: the message its searcher would raise.
    FailedAhead(String),
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
/// loader `capture` put around it. With `ahead`, the file compiled off the Lua thread stands
/// for what the standard file searcher would load, where it would load that very file
/// (`ahead_loader`). `Ok(true)`: `ahead` was used.
///
/// # Safety
/// Inside `protect`; a few free stack slots. Runs searchers (user code) under protection.
pub unsafe fn find_loader(
    l: *mut lua_State,
    name: &[u8],
    ahead: Option<&Compiled>,
) -> Result<bool, LoadError> {
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
            if let Some(ahead) = ahead {
                match ahead_loader(l, name, ahead) {
                    Some(Ok(())) => {
                        lua::lua_remove(l, searchers);
                        lua::lua_remove(l, searchers); // and the searcher
                        return Ok(true);
                    }
                    Some(Err(message)) => {
                        lua::lua_settop(l, top);
                        return Err(LoadError::FailedAhead(message));
                    }
                    None => {}
                }
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
                    return Ok(false);
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

/// If the searcher on top is the standard file searcher and would load `ahead`'s file under
/// `ahead`'s chunk name, pushes what it would have returned, from the chunk compiled ahead
/// (`Some(Ok)`), or gives the error it would have raised (`Some(Err)`): the same loader, file
/// name and message. `None` (nothing pushed): the searcher is to run as it is.
///
/// # Safety
/// The searcher on top; a few free stack slots.
unsafe fn ahead_loader(
    l: *mut lua_State,
    name: &[u8],
    ahead: &Compiled,
) -> Option<Result<(), String>> {
    // SAFETY: raw reads of the searcher's package table; the chunk is loaded as binary, by
    // the same library that dumped it.
    unsafe {
        let searcher = lua::lua_gettop(l);
        lua::lua_pushvalue(l, searcher);
        capture::unwrap_searcher(l, -1);
        let std = scratch::std_file_searcher()?;
        let is_std = lua::lua_tocfunction(l, -1).is_some_and(|f| f as usize == std);
        let path = is_std.then(|| searcher_path(l)).flatten();
        lua::lua_settop(l, searcher);
        let file = search_path(name, &path?)?;
        let chunkname = [b"@".as_slice(), file.as_bytes()].concat();
        if *chunkname != *ahead.chunkname
            || std::fs::canonicalize(&file).ok().as_deref() != Some(&ahead.file)
        {
            return None;
        }
        let chunk = match &ahead.chunk {
            Ok(chunk) => chunk,
            Err(message) => {
                return Some(Err(format!(
                    "error loading module '{}' from file '{file}':\n\t{message}",
                    String::from_utf8_lossy(name)
                )));
            }
        };
        let c_name = std::ffi::CString::new(chunkname).ok()?;
        let status = lua::luaL_loadbufferx(
            l,
            chunk.as_ptr().cast(),
            chunk.len(),
            c_name.as_ptr(),
            c"b".as_ptr(),
        );
        if status != lua::LUA_OK {
            lua::lua_pop(l, 1);
            return None;
        }
        // the standard searcher's second result: the file name (Lua 5.2+), none on LuaJIT
        if cfg!(feature = "luajit") {
            lua::lua_pushnil(l);
        } else {
            capi::push_bytes(l, file.as_bytes());
        }
        Some(Ok(()))
    }
}

/// The search path the standard file searcher on top would read: `path` of its package table
/// (its first upvalue; its environment on LuaJIT), if that is a string read without a
/// metamethod. Pushes one value.
///
/// # Safety
/// The searcher, a C function, on top; two free stack slots.
unsafe fn searcher_path(l: *mut lua_State) -> Option<String> {
    // SAFETY: raw reads; the string is copied before the stack is changed again.
    unsafe {
        #[cfg(feature = "luajit")]
        lua::lua_getfenv(l, -1);
        #[cfg(not(feature = "luajit"))]
        if lua::lua_getupvalue(l, -1, 1).is_null() {
            lua::lua_pushnil(l);
        }
        if lua::lua_type(l, -1) != lua::LUA_TTABLE || lua::lua_getmetatable(l, -1) != 0 {
            return None;
        }
        capi::push_bytes(l, b"path");
        capi::rawget(l, -2);
        match access::read(l, -1) {
            Val::Str(path) => std::str::from_utf8(path).ok().map(str::to_owned),
            _ => None,
        }
    }
}

/// The file `package.searchpath` finds for `name` in `path`: `?` replaced by the name with
/// its dots turned into directory separators, the first template whose file opens. `None`
/// for a name whose separators would split differently across Lua versions.
fn search_path(name: &[u8], path: &str) -> Option<String> {
    let name = std::str::from_utf8(name).ok()?;
    if name.contains([';', '?', '\0']) {
        return None;
    }
    let name = name.replace('.', std::path::MAIN_SEPARATOR_STR);
    path.split(';')
        .filter(|t| !t.is_empty())
        .map(|t| t.replace('?', &name))
        .find(|f| std::fs::File::open(f).is_ok())
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
