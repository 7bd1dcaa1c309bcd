//! The Lua-facing functions: argument checks and the error convention at the boundary.
//! Misuse (wrong argument types) raises a Lua error; expected failures return
//! `nil, message`; nothing owned by Rust is alive when an error is raised.

use std::ffi::CStr;
use std::os::raw::c_int;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, ErrorKind};
use crate::ffi::{self, Val, lua_State};
use crate::reload::hooks::{self, key};
use crate::watch::{Options, Watch};
use crate::{capture, poll, reload, state};

/// Metatable name of watcher handles.
const WATCHER: &CStr = c"hotreload.watcher";

/// Registry key (its address) of the table of open watcher handles: an open watcher stays
/// alive until closed, even if the program drops its handle.
static OPEN_WATCHERS: u8 = 1;

/// Registry key of the state userdata: one per Lua state, however often the module is opened.
static STATE: u8 = 4;

/// Registry key of `hotreload.defaults`, the options `reload` and `poll` use when not given.
static DEFAULTS: u8 = 2;

/// Registry key of the main thread, so the reference walk reaches its frames (Lua 5.2+ keep
/// it in the registry already; LuaJIT does not).
static MAIN_THREAD: u8 = 3;

/// Builds the module table: every export as a C closure over the state userdata. Opening the
/// module again in the same Lua state (after `package.loaded.hotreload = nil`) gives a new
/// table over the same state: the same bases, watchers, listeners and defaults.
///
/// # Safety
/// Inside a protected call; leaves the table on the stack.
pub unsafe fn open(l: *mut lua_State, exports: &[(&std::ffi::CStr, ffi::lua_CFunction)]) -> c_int {
    // SAFETY: plain table building on fresh tables and the registry (no metamethods).
    unsafe {
        ffi::luaL_checkstack(l, 24, std::ptr::null());
        ffi::lua_createtable(l, 0, exports.len() as c_int + 5);
        let module = ffi::lua_gettop(l);
        if !registry_has(l, &STATE, ffi::LUA_TUSERDATA) {
            state::push_new(l);
            ffi::lua_rawsetp(l, ffi::LUA_REGISTRYINDEX, key(&STATE));
        }
        ffi::lua_rawgetp(l, ffi::LUA_REGISTRYINDEX, key(&STATE));
        let state = module + 1;
        for (name, f) in exports {
            ffi::lua_pushvalue(l, state);
            ffi::lua_pushcclosure(l, *f, 1);
            ffi::lua_setfield(l, module, name.as_ptr());
        }
        capture::wrap_searchers(l, state);
        ffi::lua_pop(l, 1);
        register_watcher_type(l);
        if !registry_has(l, &OPEN_WATCHERS, ffi::LUA_TTABLE) {
            ffi::lua_createtable(l, 0, 0);
            ffi::lua_rawsetp(l, ffi::LUA_REGISTRYINDEX, key(&OPEN_WATCHERS));
        }
        if !registry_has(l, &DEFAULTS, ffi::LUA_TTABLE) {
            ffi::lua_createtable(l, 0, 1);
            ffi::lua_pushboolean(l, 1);
            ffi::lua_setfield(l, -2, c"replace".as_ptr());
            ffi::lua_rawsetp(l, ffi::LUA_REGISTRYINDEX, key(&DEFAULTS));
        }
        ffi::lua_rawgetp(l, ffi::LUA_REGISTRYINDEX, key(&DEFAULTS));
        ffi::lua_setfield(l, module, c"defaults".as_ptr());
        note_main_thread(l);
        ffi::push_bytes(l, env!("CARGO_PKG_VERSION").as_bytes());
        ffi::lua_setfield(l, module, c"_VERSION".as_ptr());
        ffi::push_bytes(l, ffi::FLAVOR.as_bytes());
        ffi::lua_setfield(l, module, c"flavor".as_ptr());
        let walk: &[u8] = if ffi::reads_tables_in_place(l) { b"in place" } else { b"lua_next" };
        ffi::push_bytes(l, walk);
        ffi::lua_setfield(l, module, c"table_walk".as_ptr());
        let slots: &[u8] = if ffi::reads_slots_in_place(l) { b"in place" } else { b"api" };
        ffi::push_bytes(l, slots);
        ffi::lua_setfield(l, module, c"slot_reads".as_ptr());
        1
    }
}

/// `hotreload.reload(name [, opts])` -> module, report | nil, message
/// `hotreload.reload({name, ...} [, opts])` -> modules, reports | nil, message (all or none)
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn reload(l: *mut lua_State) -> c_int {
    // SAFETY: every check that raises happens before anything is owned; `run_reload` drops
    // all it owns before `finish` may raise.
    unsafe {
        let list = match ffi::lua_type(l, 1) {
            ffi::LUA_TSTRING => false,
            ffi::LUA_TTABLE => true,
            _ => {
                return ffi::luaL_error(
                    l,
                    c"bad argument #1 to 'reload' (string or list of strings expected, got %s)"
                        .as_ptr(),
                    ffi::luaL_typename(l, 1),
                );
            }
        };
        let has_opts = ffi::lua_type(l, 2) > ffi::LUA_TNIL;
        if has_opts {
            ffi::luaL_checktype(l, 2, ffi::LUA_TTABLE);
        }
        ffi::lua_settop(l, 2);
        note_main_thread(l);
        let opts = options(l, if has_opts { 2 } else { 0 });
        // at 3: the list of names (a one-name list for a single name)
        if list {
            ffi::lua_pushvalue(l, 1);
        } else {
            ffi::lua_createtable(l, 1, 0);
            ffi::lua_pushvalue(l, 1);
            ffi::lua_rawseti(l, -2, 1);
        }
        let n = ffi::lua_rawlen(l, 3) as ffi::lua_Integer;
        for i in 1..=n {
            if ffi::lua_rawgeti(l, 3, i) != ffi::LUA_TSTRING {
                ffi::luaL_error(
                    l,
                    c"bad argument #1 to 'reload' (item %d is a %s, not a module name)".as_ptr(),
                    i as c_int,
                    ffi::luaL_typename(l, -1),
                );
            }
            ffi::lua_pop(l, 1);
        }
        // at 4 and 5: `source` and `chunkname`, each a string (one module) or a table by name
        for (at, field) in [(4, c"source"), (5, c"chunkname")] {
            per_module_field(l, has_opts, list, field, n);
            debug_assert_eq!(ffi::lua_gettop(l), at);
        }
        let (targets, order) = targets(l, n);
        let outcome = run_reload(l, &targets, &order, opts, list);
        drop((targets, order));
        finish(l, outcome)
    }
}

/// Pushes `opts[field]` (raw), after checking it is a string (only for a single module) or a
/// table whose value for each of the `n` names at 3 is a string or nil. Raises otherwise.
unsafe fn per_module_field(l: *mut lua_State, has_opts: bool, list: bool, field: &CStr, n: i64) {
    // SAFETY: raw reads; opts at 2, names at 3; one value left pushed.
    unsafe {
        if !has_opts {
            ffi::lua_pushnil(l);
            return;
        }
        ffi::lua_pushstring(l, field.as_ptr());
        let at = ffi::lua_gettop(l);
        match ffi::lua_rawget(l, 2) {
            ffi::LUA_TNIL => {}
            ffi::LUA_TSTRING if !list => {}
            ffi::LUA_TTABLE => {
                for i in 1..=n {
                    ffi::lua_rawgeti(l, 3, i);
                    let t = ffi::lua_rawget(l, at);
                    if t != ffi::LUA_TNIL && t != ffi::LUA_TSTRING {
                        ffi::luaL_error(
                            l,
                            c"bad option '%s' to 'reload' (string expected for module '%s', got %s)"
                                .as_ptr(),
                            field.as_ptr(),
                            {
                                ffi::lua_rawgeti(l, 3, i);
                                ffi::lua_tostring(l, -1)
                            },
                            ffi::luaL_typename(l, -2),
                        );
                    }
                    ffi::lua_pop(l, 1);
                }
            }
            _ => {
                ffi::luaL_error(
                    l,
                    c"bad option '%s' to 'reload' (%s expected, got %s)".as_ptr(),
                    field.as_ptr(),
                    if list { c"table of module name -> string" } else { c"string" }.as_ptr(),
                    ffi::luaL_typename(l, -1),
                );
            }
        }
    }
}

/// The targets of a checked call: names at 3, `source` at 4, `chunkname` at 5.
/// Also returns, for each name of the call, the index of its target (repeated names share one).
unsafe fn targets(l: *mut lua_State, n: i64) -> (Vec<reload::Target>, Vec<usize>) {
    let mut targets: Vec<reload::Target> = Vec::with_capacity(n as usize);
    let mut order = Vec::with_capacity(n as usize);
    let mut at_of: std::collections::HashMap<Vec<u8>, usize> =
        std::collections::HashMap::with_capacity(n as usize);
    // SAFETY: raw reads of checked values; nothing here raises.
    unsafe {
        for i in 1..=n {
            ffi::lua_rawgeti(l, 3, i);
            let name = match ffi::read(l, -1) {
                Val::Str(s) => s.to_vec(),
                _ => Vec::new(),
            };
            let source = per_module_text(l, 4)
                .map(|text| reload::Source { text, chunkname: per_module_text(l, 5) });
            ffi::lua_pop(l, 1);
            match at_of.get(&name) {
                Some(&at) => order.push(at),
                None => {
                    at_of.insert(name.clone(), targets.len());
                    order.push(targets.len());
                    targets.push(reload::Target { name, source });
                }
            }
        }
    }
    (targets, order)
}

/// The string at `at`, or the one the table at `at` holds for the name on top of the stack.
unsafe fn per_module_text(l: *mut lua_State, at: c_int) -> Option<Vec<u8>> {
    // SAFETY: raw reads; the value read is copied before it is popped.
    unsafe {
        match ffi::lua_type(l, at) {
            ffi::LUA_TSTRING => match ffi::read(l, at) {
                Val::Str(s) => Some(s.to_vec()),
                _ => None,
            },
            ffi::LUA_TTABLE => {
                ffi::lua_pushvalue(l, -1);
                ffi::lua_rawget(l, at);
                let v = match ffi::read(l, -1) {
                    Val::Str(s) => Some(s.to_vec()),
                    _ => None,
                };
                ffi::lua_pop(l, 1);
                v
            }
            _ => None,
        }
    }
}

/// Runs the batch of a `reload` call and pushes its results: for one name, the module and
/// its report; for a list, a list of modules and a list of reports.
unsafe fn run_reload(
    l: *mut lua_State,
    targets: &[reload::Target],
    order: &[usize],
    opts: reload::Options,
    list: bool,
) -> Result<c_int, Error> {
    // SAFETY: the state userdata is upvalue 1; the batch leaves two values per target.
    unsafe {
        let state = ffi::lua_upvalueindex(1);
        let name = targets.first().map_or(&b""[..], |t| &t.name);
        let Some(sb) = state::get(l, state) else {
            return Err(Error::new(ErrorKind::Internal, name, "the Lua state is closing"));
        };
        ffi::lua_pushvalue(l, state);
        let state = ffi::lua_gettop(l);
        let base = state;
        let out = reload::batch(l, &sb.data, state, targets, opts, reload::Mode::Atomic, true)?;
        if let Some(e) = out.first_error() {
            ffi::lua_settop(l, base);
            let mut e = e.clone();
            if targets.len() > 1 {
                e.detail.push_str(" (in a transaction: no module was reloaded)");
            }
            return Err(e);
        }
        // the batch left the list of modules and the list of reports, by target
        let (modules, reports) = (base + 1, base + 2);
        ffi::luaL_checkstack(l, 4, c"hotreload: Lua stack exhausted".as_ptr());
        if !list {
            ffi::lua_rawgeti(l, modules, 1);
            ffi::lua_rawgeti(l, reports, 1);
            return Ok(2);
        }
        // results in the order of the names given (a repeated name repeats its results)
        let len = c_int::try_from(order.len()).unwrap_or(0);
        ffi::lua_createtable(l, len, 0);
        ffi::lua_createtable(l, len, 0);
        for (i, &at) in order.iter().enumerate() {
            let at = ffi::lua_Integer::try_from(at + 1).unwrap_or(0);
            let i = ffi::lua_Integer::try_from(i + 1).unwrap_or(0);
            ffi::lua_rawgeti(l, reports, at);
            ffi::lua_rawseti(l, -2, i);
            ffi::lua_rawgeti(l, modules, at);
            ffi::lua_rawseti(l, -3, i);
        }
        Ok(2)
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

/// `hotreload.poll([max_ms])` -> n [, errors]
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn poll(l: *mut lua_State) -> c_int {
    // SAFETY: the idle path reads one atomic and pushes an integer (no allocation); the busy
    // path owns nothing when it pushes its results.
    unsafe {
        let budget = if ffi::lua_type(l, 1) > ffi::LUA_TNIL {
            let ms = ffi::luaL_checknumber(l, 1);
            // NaN or too long for a Duration (math.huge): no budget
            Duration::try_from_secs_f64(ms.max(0.0) / 1000.0).ok()
        } else {
            None
        };
        let state = ffi::lua_upvalueindex(1);
        let Some(sb) = state::get(l, state) else {
            ffi::lua_pushinteger(l, 0);
            return 1;
        };
        if sb.queue.is_empty() {
            ffi::lua_pushinteger(l, 0);
            return 1;
        }
        note_main_thread(l);
        let opts = options(l, 0);
        ffi::lua_pushvalue(l, state);
        let state = ffi::lua_gettop(l);
        let outcome = poll::poll(l, sb, state, budget, opts);
        push_outcome(l, outcome)
    }
}

unsafe fn push_outcome(l: *mut lua_State, outcome: poll::Outcome) -> c_int {
    // SAFETY: plain pushes; a memory error here leaks the messages and nothing else.
    unsafe {
        ffi::lua_pushinteger(l, ffi::lua_Integer::from(outcome.reloaded));
        if outcome.errors.is_empty() {
            return 1;
        }
        ffi::lua_createtable(l, outcome.errors.len() as c_int, 0);
        for (i, message) in outcome.errors.iter().enumerate() {
            ffi::push_bytes(l, message.as_bytes());
            ffi::lua_rawseti(l, -2, i as ffi::lua_Integer + 1);
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
        let n = state::get(l, ffi::lua_upvalueindex(1)).map_or(0, poll::pending);
        ffi::lua_pushinteger(l, n as ffi::lua_Integer);
        1
    }
}

/// `hotreload.on_reload(fn)` -> remove: `fn(name, module, report)` runs after every
/// successful reload; calling `remove()` stops it.
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn on_reload(l: *mut lua_State) -> c_int {
    // SAFETY: forwarded.
    unsafe { listen(l, &hooks::AFTER) }
}

/// `hotreload.before_reload(fn)` -> remove: `fn(name, old, new)` runs before each merge;
/// returning `false` refuses the reload.
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn before_reload(l: *mut lua_State) -> c_int {
    // SAFETY: forwarded.
    unsafe { listen(l, &hooks::BEFORE) }
}

/// `hotreload.pin(name [, reason])` -> unpin: module `name` is never reloaded from now on:
/// `reload` and `poll` refuse it before loading anything, with `reason` as the message. For a
/// file that sets the program up once (LÖVE's `main.lua`). `unpin()` returns true the first
/// time, false after.
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn pin(l: *mut lua_State) -> c_int {
    // SAFETY: the types are checked first; the rest builds plain values.
    unsafe {
        ffi::luaL_checktype(l, 1, ffi::LUA_TSTRING);
        if ffi::lua_type(l, 2) <= ffi::LUA_TNIL {
            ffi::lua_settop(l, 1);
            ffi::lua_pushstring(l, c"it is pinned (hotreload.pin): restart to apply it".as_ptr());
        } else {
            ffi::luaL_checktype(l, 2, ffi::LUA_TSTRING);
        }
        ffi::lua_settop(l, 2);
        hooks::set_pinned(l, 1, 2);
        ffi::lua_pushboolean(l, 0);
        ffi::lua_pushcclosure(l, unpin, 3);
        1
    }
}

/// The function `pin` returns: unpins its module (the first time it is called).
unsafe extern "C-unwind" fn unpin(l: *mut lua_State) -> c_int {
    // SAFETY: the upvalues are the ones `pin` set (name, reason, done flag).
    unsafe {
        let done = ffi::lua_toboolean(l, ffi::lua_upvalueindex(3)) != 0;
        if !done {
            ffi::lua_pushnil(l);
            hooks::set_pinned(l, ffi::lua_upvalueindex(1), -1);
            ffi::lua_pushboolean(l, 1);
            ffi::lua_replace(l, ffi::lua_upvalueindex(3));
        }
        ffi::lua_pushboolean(l, c_int::from(!done));
        1
    }
}

/// Adds the listener at 1 to list `k` and pushes its remover: a closure over (list key,
/// listener, done flag), so that calling it twice removes one registration only.
unsafe fn listen(l: *mut lua_State, k: &'static u8) -> c_int {
    // SAFETY: the type is checked first; the rest builds plain values.
    unsafe {
        ffi::luaL_checktype(l, 1, ffi::LUA_TFUNCTION);
        ffi::lua_settop(l, 1);
        hooks::add_listener(l, k, 1);
        ffi::lua_pushlightuserdata(l, hooks::key(k).cast_mut());
        ffi::lua_pushvalue(l, 1);
        ffi::lua_pushboolean(l, 0);
        ffi::lua_pushcclosure(l, unlisten, 3);
        1
    }
}

/// The remover `listen` makes: -> true if it removed the listener, false if already removed.
unsafe extern "C-unwind" fn unlisten(l: *mut lua_State) -> c_int {
    // SAFETY: the upvalues are the ones `listen` set.
    unsafe {
        let done = ffi::lua_toboolean(l, ffi::lua_upvalueindex(3)) != 0;
        if !done {
            let p = ffi::lua_touserdata(l, ffi::lua_upvalueindex(1));
            let k = if p == hooks::key(&hooks::BEFORE).cast_mut() {
                &hooks::BEFORE
            } else {
                &hooks::AFTER
            };
            hooks::remove_listener(l, k, ffi::lua_upvalueindex(2));
            ffi::lua_pushboolean(l, 1);
            ffi::lua_replace(l, ffi::lua_upvalueindex(3));
        }
        ffi::lua_pushboolean(l, c_int::from(!done));
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
        ffi::luaL_checktype(l, 1, ffi::LUA_TSTRING);
        let has_opts = ffi::lua_type(l, 2) > ffi::LUA_TNIL;
        if has_opts {
            ffi::luaL_checktype(l, 2, ffi::LUA_TTABLE);
        }
        ffi::lua_settop(l, 2);
        let pattern = opt_field(l, has_opts, c"pattern", ffi::LUA_TSTRING); // at 3
        let settle = opt_field(l, has_opts, c"settle_ms", ffi::LUA_TNUMBER); // at 4
        let Some(sb) = state::get(l, ffi::lua_upvalueindex(1)) else {
            return raise(l, "hotreload: the Lua state is closing");
        };
        capture::wrap_searchers(l, ffi::lua_upvalueindex(1));
        let ud = push_handle(l); // at 5
        let mut opts = Options::default();
        if let (true, Val::Str(p)) = (pattern, ffi::read(l, 3)) {
            opts.pattern = String::from_utf8_lossy(p).into_owned();
        }
        if settle {
            let ms = ffi::lua_tonumber(l, 4);
            match Duration::try_from_secs_f64(ms.max(0.0) / 1000.0) {
                Ok(d) => opts.settle = Some(d),
                Err(_) => {
                    drop(opts);
                    return raise(
                        l,
                        "bad option 'settle_ms' to 'watch' (a finite number expected)",
                    );
                }
            }
        }
        let dir = match ffi::read(l, 1) {
            Val::Str(d) => String::from_utf8_lossy(d).into_owned(),
            _ => String::new(),
        };
        match Watch::start(Path::new(&dir), &opts, sb.queue.clone()) {
            Ok(w) => {
                *ud = Some(w);
                drop(dir);
                drop(opts);
                // keep it open until closed (see OPEN_WATCHERS)
                ffi::lua_rawgetp(l, ffi::LUA_REGISTRYINDEX, key(&OPEN_WATCHERS));
                ffi::lua_pushvalue(l, 5);
                ffi::lua_pushboolean(l, 1);
                ffi::lua_rawset(l, -3);
                ffi::lua_settop(l, 5);
                1
            }
            Err(e) => {
                let message = format!("hotreload: {e}");
                drop((dir, opts, e));
                ffi::lua_pushnil(l);
                ffi::push_bytes(l, message.as_bytes());
                drop(message);
                2
            }
        }
    }
}

/// Pushes `opts[name]` (raw) and says whether it is set; raises if it has another type.
unsafe fn opt_field(l: *mut lua_State, has_opts: bool, name: &CStr, want: c_int) -> bool {
    // SAFETY: opts is a table at 2 when `has_opts`; one push either way.
    unsafe {
        if !has_opts {
            ffi::lua_pushnil(l);
            return false;
        }
        ffi::lua_pushstring(l, name.as_ptr());
        let t = ffi::lua_rawget(l, 2);
        if t != ffi::LUA_TNIL && t != want {
            ffi::luaL_error(
                l,
                c"bad option '%s' to 'watch' (%s expected, got %s)".as_ptr(),
                name.as_ptr(),
                ffi::lua_typename(l, want),
                ffi::luaL_typename(l, -1),
            );
        }
        t != ffi::LUA_TNIL
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
        ffi::luaL_checktype(l, 1, ffi::LUA_TSTRING);
        let target = match ffi::read(l, 1) {
            Val::Str(d) => std::fs::canonicalize(String::from_utf8_lossy(d).as_ref()).ok(),
            _ => None,
        };
        let mut closed = 0;
        if let Some(target) = target {
            ffi::lua_rawgetp(l, ffi::LUA_REGISTRYINDEX, key(&OPEN_WATCHERS));
            let open = ffi::lua_gettop(l);
            ffi::lua_createtable(l, 4, 0);
            let matches = open + 1;
            ffi::lua_pushnil(l);
            while ffi::lua_next(l, open) != 0 {
                ffi::lua_pop(l, 1);
                let w = ffi::lua_touserdata(l, -1).cast::<Option<Watch>>();
                if !w.is_null() && (*w).as_ref().is_some_and(|w| w.root() == target) {
                    closed += 1;
                    ffi::lua_pushvalue(l, -1);
                    ffi::lua_rawseti(l, matches, closed);
                }
            }
            drop(target);
            for i in 1..=closed {
                ffi::lua_rawgeti(l, matches, i);
                close_handle(l, ffi::lua_gettop(l));
                ffi::lua_pop(l, 1);
            }
        }
        ffi::lua_pushinteger(l, closed);
        1
    }
}

/// Reload options: `opts` (a table at `opts`, or 0 for none) over `hotreload.defaults`.
/// Raises if an option has the wrong type.
unsafe fn options(l: *mut lua_State, opts: c_int) -> reload::Options {
    let mut o = reload::Options::default();
    // SAFETY: raw reads of two tables; one push per read, popped.
    unsafe {
        ffi::lua_rawgetp(l, ffi::LUA_REGISTRYINDEX, key(&DEFAULTS));
        let defaults = ffi::lua_gettop(l);
        for (table, what) in [(defaults, c"hotreload.defaults"), (opts, c"reload")] {
            if table == 0 || ffi::lua_type(l, table) != ffi::LUA_TTABLE {
                continue;
            }
            for (name, flag) in [(c"replace", &mut o.replace), (c"binary", &mut o.binary)] {
                ffi::lua_pushstring(l, name.as_ptr());
                match ffi::lua_rawget(l, table) {
                    ffi::LUA_TNIL => {}
                    ffi::LUA_TBOOLEAN => *flag = ffi::lua_toboolean(l, -1) != 0,
                    _ => {
                        ffi::luaL_error(
                            l,
                            c"bad option '%s' to '%s' (boolean expected, got %s)".as_ptr(),
                            name.as_ptr(),
                            what.as_ptr(),
                            ffi::luaL_typename(l, -1),
                        );
                    }
                }
                ffi::lua_pop(l, 1);
            }
        }
        ffi::lua_pop(l, 1);
    }
    o
}

/// Records the main thread in the registry the first time any function runs on it (LuaJIT
/// keeps no reference to it there; the walk needs one to reach its locals).
unsafe fn note_main_thread(l: *mut lua_State) {
    // SAFETY: a raw read, and a raw write of a value that is on the stack; balanced.
    unsafe {
        if registry_has(l, &MAIN_THREAD, ffi::LUA_TTHREAD) {
            return;
        }
        if ffi::lua_pushthread(l) == 1 {
            ffi::lua_rawsetp(l, ffi::LUA_REGISTRYINDEX, key(&MAIN_THREAD));
        } else {
            ffi::lua_pop(l, 1);
        }
    }
}

/// Whether the registry holds a value of type `t` at key `k`.
unsafe fn registry_has(l: *mut lua_State, k: &'static u8, t: c_int) -> bool {
    // SAFETY: a raw read, popped.
    unsafe {
        let found = ffi::lua_rawgetp(l, ffi::LUA_REGISTRYINDEX, key(k)) == t;
        ffi::lua_pop(l, 1);
        found
    }
}

/// Creates the metatable of watcher handles in the registry.
unsafe fn register_watcher_type(l: *mut lua_State) {
    // SAFETY: fills a fresh metatable; stack balanced.
    unsafe {
        ffi::luaL_newmetatable(l, WATCHER.as_ptr());
        ffi::lua_createtable(l, 0, 1);
        ffi::lua_pushcfunction(l, watcher_close);
        ffi::lua_setfield(l, -2, c"close".as_ptr());
        ffi::lua_setfield(l, -2, c"__index".as_ptr());
        for (name, f) in [
            (c"__gc", watcher_gc as ffi::lua_CFunction),
            (c"__close", watcher_gc),
            (c"__tostring", watcher_tostring),
        ] {
            ffi::lua_pushcfunction(l, f);
            ffi::lua_setfield(l, -2, name.as_ptr());
        }
        ffi::lua_pop(l, 1);
    }
}

/// Pushes a closed watcher handle and returns its slot.
unsafe fn push_handle<'a>(l: *mut lua_State) -> &'a mut Option<Watch> {
    // SAFETY: the userdata is sized for the Option and initialised before anything else.
    unsafe {
        let ud = ffi::lua_newuserdata(l, size_of::<Option<Watch>>()).cast::<Option<Watch>>();
        ud.write(None);
        ffi::luaL_setmetatable(l, WATCHER.as_ptr());
        &mut *ud
    }
}

/// Stops the watcher of the handle at `idx` and forgets it; idempotent.
unsafe fn close_handle(l: *mut lua_State, idx: c_int) {
    // SAFETY: `idx` holds a watcher handle (checked by the callers).
    unsafe {
        let idx = ffi::lua_absindex(l, idx);
        let w = ffi::lua_touserdata(l, idx).cast::<Option<Watch>>();
        if w.is_null() {
            return;
        }
        let Some(watch) = (*w).take() else { return };
        let mut others = Vec::new();
        ffi::lua_rawgetp(l, ffi::LUA_REGISTRYINDEX, key(&OPEN_WATCHERS));
        if ffi::lua_type(l, -1) == ffi::LUA_TTABLE {
            let open = ffi::lua_gettop(l);
            ffi::lua_pushvalue(l, idx);
            ffi::lua_pushnil(l);
            ffi::lua_rawset(l, open);
            ffi::lua_pushnil(l);
            while ffi::lua_next(l, open) != 0 {
                ffi::lua_pop(l, 1);
                let o = ffi::lua_touserdata(l, -1).cast::<Option<Watch>>();
                if let Some(o) = o.as_ref().and_then(Option::as_ref) {
                    others.push(o.root().to_owned());
                }
            }
        }
        ffi::lua_pop(l, 1);
        watch.close(&others);
    }
}

/// `watcher:close()`: stops watching; calling it again does nothing.
unsafe extern "C-unwind" fn watcher_close(l: *mut lua_State) -> c_int {
    // SAFETY: luaL_checkudata raises on anything but a watcher handle.
    unsafe {
        ffi::luaL_checkudata(l, 1, WATCHER.as_ptr());
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
        let w = ffi::luaL_checkudata(l, 1, WATCHER.as_ptr()).cast::<Option<Watch>>();
        let text = match (*w).as_ref() {
            Some(w) => format!("hotreload.watcher ({})", w.root().display()),
            None => "hotreload.watcher (closed)".to_owned(),
        };
        ffi::push_bytes(l, text.as_bytes());
        drop(text);
        1
    }
}

/// Raises `message` as a Lua error (nothing owned stays alive).
unsafe fn raise(l: *mut lua_State, message: &str) -> c_int {
    // SAFETY: the message is a borrowed &str, copied into Lua before lua_error.
    unsafe {
        ffi::push_bytes(l, message.as_bytes());
        ffi::lua_error(l)
    }
}
