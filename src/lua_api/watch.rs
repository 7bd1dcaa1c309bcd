//! `hotreload.watch`, `unwatch`, `poll`, `pending`, and the watcher handle.

use std::ffi::CStr;
use std::os::raw::c_int;
use std::path::PathBuf;
use std::time::Duration;

use mlua::ffi as lua;

use super::{QUEUE_UPVALUE, STATE_UPVALUE, note_main_thread, options, poll, raise, session};
use crate::engine::{capture, state};
use crate::vm::access::{self, Val};
use crate::vm::capi::{self, lua_State};
use crate::vm::registry::{OPEN_WATCHERS, key};
use crate::watch::compile;
use crate::watch::watcher::{Options, Watch};

/// Metatable name of watcher handles.
const WATCHER: &CStr = c"hotreload.watcher";

/// `hotreload.poll([max_ms])` -> n [, errors]
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn poll(l: *mut lua_State) -> c_int {
    // SAFETY: the idle path reads one atomic and pushes an integer (no allocation); the busy
    // path owns nothing when it pushes its results.
    unsafe {
        let budget = if lua::lua_type(l, 1) > lua::LUA_TNIL {
            let ms = lua::luaL_checknumber(l, 1);
            // NaN or too long for a Duration (math.huge): no budget
            Duration::try_from_secs_f64(ms.max(0.0) / 1000.0).ok()
        } else {
            None
        };
        let state = lua::lua_upvalueindex(STATE_UPVALUE);
        let (Some(queue), Some(cell)) =
            (session::get(l, lua::lua_upvalueindex(QUEUE_UPVALUE)), state::get(l, state))
        else {
            lua::lua_pushinteger(l, 0);
            return 1;
        };
        if queue.is_empty() {
            lua::lua_pushinteger(l, 0);
            return 1;
        }
        note_main_thread(l);
        let opts = options(l, 0);
        lua::lua_pushvalue(l, state);
        let state = lua::lua_gettop(l);
        let outcome = poll::poll(l, (cell, state), queue, budget, opts);
        push_outcome(l, outcome)
    }
}

unsafe fn push_outcome(l: *mut lua_State, outcome: poll::Outcome) -> c_int {
    // SAFETY: plain pushes; a memory error here leaks the messages and nothing else.
    unsafe {
        lua::lua_pushinteger(l, lua::lua_Integer::from(outcome.reloaded));
        if outcome.errors.is_empty() {
            return 1;
        }
        lua::lua_createtable(l, outcome.errors.len() as c_int, 0);
        for (i, message) in outcome.errors.iter().enumerate() {
            capi::push_bytes(l, message.as_bytes());
            lua::lua_rawseti(l, -2, i as lua::lua_Integer + 1);
        }
        2
    }
}

/// `hotreload.pending()` -> number of changed files waiting for a poll
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn pending(l: *mut lua_State) -> c_int {
    // SAFETY: reads the state's queue length.
    unsafe {
        let n = session::get(l, lua::lua_upvalueindex(QUEUE_UPVALUE)).map_or(0, |q| q.len());
        lua::lua_pushinteger(l, n as lua::lua_Integer);
        1
    }
}

/// `hotreload.stats()` -> `{ compiled_ahead = n, files_compiled_ahead = m }`: how many
/// reloads of this state loaded a file compiled off the Lua thread (`watch`'s
/// `compile_ahead`), and how many saved files the process compiled that way.
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn stats(l: *mut lua_State) -> c_int {
    // SAFETY: a copy of the counter, then plain pushes.
    unsafe {
        let ahead = state::get(l, lua::lua_upvalueindex(STATE_UPVALUE))
            .and_then(|cell| cell.try_borrow().ok().map(|k| k.compiled_ahead))
            .unwrap_or(0);
        lua::lua_createtable(l, 0, 2);
        for (field, n) in
            [(c"compiled_ahead", ahead), (c"files_compiled_ahead", compile::compiled())]
        {
            lua::lua_pushinteger(l, lua::lua_Integer::try_from(n).unwrap_or(lua::lua_Integer::MAX));
            lua::lua_setfield(l, -2, field.as_ptr());
        }
        1
    }
}

/// `hotreload.watch(dir [, opts])` -> watcher | nil, message
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn watch(l: *mut lua_State) -> c_int {
    // SAFETY: every check and allocation happens before the watcher exists; once it does,
    // nothing can raise until it is stored in its userdata.
    unsafe {
        lua::luaL_checktype(l, 1, lua::LUA_TSTRING);
        let has_opts = lua::lua_type(l, 2) > lua::LUA_TNIL;
        if has_opts {
            lua::luaL_checktype(l, 2, lua::LUA_TTABLE);
        }
        lua::lua_settop(l, 2);
        let Some(queue) = session::get(l, lua::lua_upvalueindex(QUEUE_UPVALUE)) else {
            return raise(l, "hotreload: the Lua state is closing");
        };
        capture::wrap_searchers(l, lua::lua_upvalueindex(STATE_UPVALUE));
        let opts = match watch_options(l, has_opts) {
            Ok(opts) => opts,
            Err(message) => return raise(l, message),
        };
        let ud = push_handle(l);
        let handle = lua::lua_gettop(l);
        let dir = match access::read(l, 1) {
            Val::Str(d) => path_of(d),
            _ => PathBuf::new(),
        };
        match Watch::start(&dir, &opts, queue.clone()) {
            Ok(w) => {
                *ud = Some(w);
                drop(dir);
                drop(opts);
                // keep it open until closed (see OPEN_WATCHERS)
                lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&OPEN_WATCHERS));
                lua::lua_pushvalue(l, handle);
                lua::lua_pushboolean(l, 1);
                lua::lua_rawset(l, -3);
                lua::lua_settop(l, handle);
                1
            }
            Err(e) => {
                let message = format!("hotreload: {e}");
                drop((dir, opts, e));
                lua::lua_pushnil(l);
                capi::push_bytes(l, message.as_bytes());
                drop(message);
                2
            }
        }
    }
}

/// The options of `watch` from the table at 2 (if `has_opts`); `Err`: the message of a bad
/// option. Every type is checked (raising on misuse) before anything is allocated. Leaves
/// the six option values on the stack (3 to 8), which the caller drops.
unsafe fn watch_options(l: *mut lua_State, has_opts: bool) -> Result<Options, &'static str> {
    // SAFETY: raw reads of the options table; one push per option.
    unsafe {
        let pattern = opt_field(l, has_opts, c"pattern", lua::LUA_TSTRING); // at 3
        let settle = opt_field(l, has_opts, c"settle_ms", lua::LUA_TNUMBER); // at 4
        let poll = opt_field(l, has_opts, c"poll_ms", lua::LUA_TNUMBER); // at 5
        let path = opt_field(l, has_opts, c"path", lua::LUA_TSTRING); // at 6
        let ignore = opt_field(l, has_opts, c"ignore", lua::LUA_TTABLE); // at 7
        let compile = opt_field(l, has_opts, c"compile_ahead", lua::LUA_TBOOLEAN); // at 8
        let n_ignored = if ignore { lua::lua_rawlen(l, 7) as lua::lua_Integer } else { 0 };
        for i in 1..=n_ignored {
            let t = lua::lua_rawgeti(l, 7, i);
            lua::lua_pop(l, 1);
            if t != lua::LUA_TSTRING {
                lua::luaL_error(
                    l,
                    c"bad option 'ignore' to 'watch' (a list of strings expected)".as_ptr(),
                );
            }
        }
        let mut opts = Options::default();
        if pattern {
            opts.pattern = string_at(l, 3);
        }
        if settle {
            let settle = duration_at(l, 4);
            opts.settle =
                Some(settle.ok_or("bad option 'settle_ms' to 'watch' (a finite number expected)")?);
        }
        if poll {
            let every = duration_at(l, 5).filter(|d| !d.is_zero());
            opts.poll =
                Some(every.ok_or("bad option 'poll_ms' to 'watch' (a positive number expected)")?);
        }
        if path {
            opts.path = Some(string_at(l, 6));
        }
        if compile {
            opts.compile_ahead = lua::lua_toboolean(l, 8) != 0;
        }
        for i in 1..=n_ignored {
            lua::lua_rawgeti(l, 7, i);
            opts.ignore.push(string_at(l, -1));
            lua::lua_pop(l, 1);
        }
        Ok(opts)
    }
}

/// A directory name as Lua gave it: its bytes, UTF-8 or not, where the OS takes bytes (so
/// that `watch` can say the path is not UTF-8 rather than that it does not exist).
fn path_of(bytes: &[u8]) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
    }
    #[cfg(not(unix))]
    {
        PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// The string at `idx` (a string), copied.
unsafe fn string_at(l: *mut lua_State, idx: c_int) -> String {
    // SAFETY: forwarded; the bytes are copied at once.
    match unsafe { access::read(l, idx) } {
        Val::Str(s) => String::from_utf8_lossy(s).into_owned(),
        _ => String::new(),
    }
}

/// The number of milliseconds at `idx` as a duration; `None` if negative-infinite, NaN or
/// too long.
unsafe fn duration_at(l: *mut lua_State, idx: c_int) -> Option<Duration> {
    // SAFETY: forwarded.
    let ms = unsafe { lua::lua_tonumber(l, idx) };
    Duration::try_from_secs_f64(ms.max(0.0) / 1000.0).ok()
}

/// Pushes `opts[name]` (raw) and says whether it is set; raises if it has another type.
unsafe fn opt_field(l: *mut lua_State, has_opts: bool, name: &CStr, want: c_int) -> bool {
    // SAFETY: opts is a table at 2 when `has_opts`; one push either way.
    unsafe {
        if !has_opts {
            lua::lua_pushnil(l);
            return false;
        }
        lua::lua_pushstring(l, name.as_ptr());
        let t = lua::lua_rawget(l, 2);
        if t != lua::LUA_TNIL && t != want {
            lua::luaL_error(
                l,
                c"bad option '%s' to 'watch' (%s expected, got %s)".as_ptr(),
                name.as_ptr(),
                lua::lua_typename(l, want),
                lua::luaL_typename(l, -1),
            );
        }
        t != lua::LUA_TNIL
    }
}

/// `hotreload.unwatch(dir)` -> number of watchers closed
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn unwatch(l: *mut lua_State) -> c_int {
    // SAFETY: the table of open handles is only read while collecting matches, then each
    // match is closed; owned values are dropped before pushing the result.
    unsafe {
        lua::luaL_checktype(l, 1, lua::LUA_TSTRING);
        let target = match access::read(l, 1) {
            Val::Str(d) => std::fs::canonicalize(path_of(d)).ok(),
            _ => None,
        };
        let mut closed = 0;
        if let Some(target) = target {
            lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&OPEN_WATCHERS));
            let open = lua::lua_gettop(l);
            lua::lua_createtable(l, 4, 0);
            let matches = open + 1;
            lua::lua_pushnil(l);
            while lua::lua_next(l, open) != 0 {
                lua::lua_pop(l, 1);
                let w = lua::lua_touserdata(l, -1).cast::<Option<Watch>>();
                if !w.is_null() && (*w).as_ref().is_some_and(|w| w.root() == target) {
                    closed += 1;
                    lua::lua_pushvalue(l, -1);
                    lua::lua_rawseti(l, matches, closed);
                }
            }
            drop(target);
            for i in 1..=closed {
                lua::lua_rawgeti(l, matches, i);
                close_handle(l, lua::lua_gettop(l));
                lua::lua_pop(l, 1);
            }
        }
        lua::lua_pushinteger(l, closed);
        1
    }
}

/// Creates the metatable of watcher handles in the registry.
pub(super) unsafe fn register_watcher_type(l: *mut lua_State) {
    // SAFETY: fills a fresh metatable; stack balanced.
    unsafe {
        lua::luaL_newmetatable(l, WATCHER.as_ptr());
        lua::lua_createtable(l, 0, 1);
        lua::lua_pushcfunction(l, watcher_close);
        lua::lua_setfield(l, -2, c"close".as_ptr());
        lua::lua_setfield(l, -2, c"__index".as_ptr());
        for (name, f) in [
            (c"__gc", watcher_gc as lua::lua_CFunction),
            (c"__close", watcher_gc),
            (c"__tostring", watcher_tostring),
        ] {
            lua::lua_pushcfunction(l, f);
            lua::lua_setfield(l, -2, name.as_ptr());
        }
        lua::lua_pop(l, 1);
    }
}

/// Pushes a closed watcher handle and returns its slot.
unsafe fn push_handle<'a>(l: *mut lua_State) -> &'a mut Option<Watch> {
    // SAFETY: the userdata is sized for the Option and initialised before anything else.
    unsafe {
        let ud = lua::lua_newuserdata(l, size_of::<Option<Watch>>()).cast::<Option<Watch>>();
        ud.write(None);
        lua::luaL_setmetatable(l, WATCHER.as_ptr());
        &mut *ud
    }
}

/// Stops the watcher of the handle at `idx` and forgets it; idempotent.
unsafe fn close_handle(l: *mut lua_State, idx: c_int) {
    // SAFETY: `idx` holds a watcher handle (checked by the callers).
    unsafe {
        let idx = lua::lua_absindex(l, idx);
        let w = lua::lua_touserdata(l, idx).cast::<Option<Watch>>();
        if w.is_null() {
            return;
        }
        let Some(watch) = (*w).take() else { return };
        let mut others = Vec::new();
        lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&OPEN_WATCHERS));
        if lua::lua_type(l, -1) == lua::LUA_TTABLE {
            let open = lua::lua_gettop(l);
            lua::lua_pushvalue(l, idx);
            lua::lua_pushnil(l);
            lua::lua_rawset(l, open);
            lua::lua_pushnil(l);
            while lua::lua_next(l, open) != 0 {
                lua::lua_pop(l, 1);
                let o = lua::lua_touserdata(l, -1).cast::<Option<Watch>>();
                if let Some(o) = o.as_ref().and_then(Option::as_ref) {
                    others.push(o.root().to_owned());
                }
            }
        }
        lua::lua_pop(l, 1);
        watch.close(&others);
    }
}

/// `watcher:close()`: stops watching; calling it again does nothing.
unsafe extern "C-unwind" fn watcher_close(l: *mut lua_State) -> c_int {
    // SAFETY: luaL_checkudata raises on anything but a watcher handle.
    unsafe {
        lua::luaL_checkudata(l, 1, WATCHER.as_ptr());
        close_handle(l, 1);
    }
    0
}

/// `__gc` and `__close`: the same as `close`, without complaint.
unsafe extern "C-unwind" fn watcher_gc(l: *mut lua_State) -> c_int {
    // SAFETY: only installed on watcher handles.
    unsafe { close_handle(l, 1) };
    0
}

unsafe extern "C-unwind" fn watcher_tostring(l: *mut lua_State) -> c_int {
    // SAFETY: checked type; the text is copied into Lua before it is dropped.
    unsafe {
        let w = lua::luaL_checkudata(l, 1, WATCHER.as_ptr()).cast::<Option<Watch>>();
        let text = match (*w).as_ref() {
            Some(w) if w.inherited() => format!(
                "hotreload.watcher ({}, started before this process was forked: not watching here)",
                w.root().display()
            ),
            Some(w) if w.lost() => {
                format!("hotreload.watcher ({}, lost: removed or renamed)", w.root().display())
            }
            Some(w) => match w.polled_every() {
                Some(every) => format!(
                    "hotreload.watcher ({}, polled every {} ms)",
                    w.root().display(),
                    every.as_millis()
                ),
                None => format!("hotreload.watcher ({})", w.root().display()),
            },
            None => "hotreload.watcher (closed)".to_owned(),
        };
        capi::push_bytes(l, text.as_bytes());
        drop(text);
        1
    }
}
