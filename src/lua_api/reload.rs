//! `hotreload.reload`, its options and results, `pin`, and the listeners.

use std::ffi::CStr;
use std::os::raw::c_int;

use mlua::ffi as lua;

use super::{STATE_UPVALUE, dependents, note_main_thread, options};
use crate::engine::error::{Error, ErrorKind};
use crate::engine::{self, hooks, state};
use crate::vm::access::{self, Val};
use crate::vm::capi::{self, lua_State};
use crate::vm::registry::{AFTER, BEFORE, key};

/// `hotreload.reload(name [, opts])` -> module, report | nil, message
/// `hotreload.reload({name, ...} [, opts])` -> modules, reports | nil, message (all or none)
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn reload(l: *mut lua_State) -> c_int {
    // SAFETY: every check that raises happens before anything is owned; `run_reload` drops
    // all it owns before `finish` may raise.
    unsafe {
        let list = match lua::lua_type(l, 1) {
            lua::LUA_TSTRING => false,
            lua::LUA_TTABLE => true,
            _ => {
                return lua::luaL_error(
                    l,
                    c"bad argument #1 to 'reload' (string or list of strings expected, got %s)"
                        .as_ptr(),
                    lua::luaL_typename(l, 1),
                );
            }
        };
        let has_opts = lua::lua_type(l, 2) > lua::LUA_TNIL;
        if has_opts {
            lua::luaL_checktype(l, 2, lua::LUA_TTABLE);
        }
        lua::lua_settop(l, 2);
        note_main_thread(l);
        let opts = options(l, if has_opts { 2 } else { 0 });
        // at 3: the list of names (a one-name list for a single name)
        if list {
            lua::lua_pushvalue(l, 1);
        } else {
            lua::lua_createtable(l, 1, 0);
            lua::lua_pushvalue(l, 1);
            lua::lua_rawseti(l, -2, 1);
        }
        let n = lua::lua_rawlen(l, 3) as lua::lua_Integer;
        for i in 1..=n {
            if lua::lua_rawgeti(l, 3, i) != lua::LUA_TSTRING {
                lua::luaL_error(
                    l,
                    c"bad argument #1 to 'reload' (item %d is a %s, not a module name)".as_ptr(),
                    i as c_int,
                    lua::luaL_typename(l, -1),
                );
            }
            lua::lua_pop(l, 1);
        }
        // at 4 and 5: `source` and `chunkname`, each a string (one module) or a table by name
        for (at, field) in [(4, c"source"), (5, c"chunkname")] {
            per_module_field(l, has_opts, list, field, n);
            debug_assert_eq!(lua::lua_gettop(l), at);
        }
        let (mut targets, mut order) = targets(l, n);
        if opts.dependents {
            with_dependents(l, &mut targets, &mut order);
        }
        let outcome = run_reload(l, &targets, &order, opts, list);
        let outcome = match outcome {
            Ok(n) if opts.dependents => name_dependents(l, &targets, &order, list).map(|()| n),
            other => other,
        };
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
            lua::lua_pushnil(l);
            return;
        }
        lua::lua_pushstring(l, field.as_ptr());
        let at = lua::lua_gettop(l);
        match lua::lua_rawget(l, 2) {
            lua::LUA_TNIL => {}
            lua::LUA_TSTRING if !list => {}
            lua::LUA_TTABLE => {
                for i in 1..=n {
                    lua::lua_rawgeti(l, 3, i);
                    let t = lua::lua_rawget(l, at);
                    if t != lua::LUA_TNIL && t != lua::LUA_TSTRING {
                        lua::luaL_error(
                            l,
                            c"bad option '%s' to 'reload' (string expected for module '%s', got %s)"
                                .as_ptr(),
                            field.as_ptr(),
                            {
                                lua::lua_rawgeti(l, 3, i);
                                lua::lua_tostring(l, -1)
                            },
                            lua::luaL_typename(l, -2),
                        );
                    }
                    lua::lua_pop(l, 1);
                }
            }
            _ => {
                lua::luaL_error(
                    l,
                    c"bad option '%s' to 'reload' (%s expected, got %s)".as_ptr(),
                    field.as_ptr(),
                    if list { c"table of module name -> string" } else { c"string" }.as_ptr(),
                    lua::luaL_typename(l, -1),
                );
            }
        }
    }
}

/// The targets of a checked call: names at 3, `source` at 4, `chunkname` at 5.
/// Also returns, for each name of the call, the index of its target (repeated names share one).
unsafe fn targets(l: *mut lua_State, n: i64) -> (Vec<engine::Target>, Vec<usize>) {
    let mut targets: Vec<engine::Target> = Vec::with_capacity(n as usize);
    let mut order = Vec::with_capacity(n as usize);
    let mut at_of: std::collections::HashMap<Vec<u8>, usize> =
        std::collections::HashMap::with_capacity(n as usize);
    // SAFETY: raw reads of checked values; nothing here raises.
    unsafe {
        for i in 1..=n {
            lua::lua_rawgeti(l, 3, i);
            let name = match access::read(l, -1) {
                Val::Str(s) => s.to_vec(),
                _ => Vec::new(),
            };
            let source = per_module_text(l, 4)
                .map(|text| engine::Source { text, chunkname: per_module_text(l, 5) });
            lua::lua_pop(l, 1);
            match at_of.get(&name) {
                Some(&at) => order.push(at),
                None => {
                    at_of.insert(name.clone(), targets.len());
                    order.push(targets.len());
                    targets.push(engine::Target { name, source, ahead: None });
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
        match lua::lua_type(l, at) {
            lua::LUA_TSTRING => match access::read(l, at) {
                Val::Str(s) => Some(s.to_vec()),
                _ => None,
            },
            lua::LUA_TTABLE => {
                lua::lua_pushvalue(l, -1);
                lua::lua_rawget(l, at);
                let v = match access::read(l, -1) {
                    Val::Str(s) => Some(s.to_vec()),
                    _ => None,
                };
                lua::lua_pop(l, 1);
                v
            }
            _ => None,
        }
    }
}

/// Adds the loaded dependents of the targets (`dependents = true`) and puts them all in
/// dependency order, one transaction; `order` follows the targets it points at.
unsafe fn with_dependents(
    l: *mut lua_State,
    targets: &mut Vec<engine::Target>,
    order: &mut [usize],
) {
    // SAFETY: the state userdata is upvalue 1; reads of `package.loaded` run protected.
    unsafe {
        let Some(cell) = state::get(l, lua::lua_upvalueindex(STATE_UPVALUE)) else { return };
        let roots: Vec<Box<[u8]>> = targets.iter().map(|t| t.name.as_slice().into()).collect();
        let all: Vec<Box<[u8]>> =
            dependents::chains(l, cell, &roots).into_iter().flatten().collect();
        let sorted = cell.try_borrow().map(|k| k.graph.order(&all)).unwrap_or(all);
        let mut given: Vec<Option<engine::Target>> =
            std::mem::take(targets).into_iter().map(Some).collect();
        let mut moved = vec![0; given.len()];
        for name in sorted {
            match roots.iter().position(|r| *r == name) {
                Some(i) => {
                    moved[i] = targets.len();
                    if let Some(t) = given.get_mut(i).and_then(Option::take) {
                        targets.push(t);
                    }
                }
                None => targets.push(engine::Target::named(name.into_vec())),
            }
        }
        for at in order.iter_mut() {
            *at = moved.get(*at).copied().unwrap_or(0);
        }
    }
}

/// Sets `report.dependents` of each named module's report (on top of the stack: one report,
/// or a list by name) to the dependents of it the transaction reloaded.
unsafe fn name_dependents(
    l: *mut lua_State,
    targets: &[engine::Target],
    order: &[usize],
    list: bool,
) -> Result<(), Error> {
    // SAFETY: raw reads of the report(s) just pushed, and raw writes of fresh lists.
    unsafe {
        let Some(cell) = state::get(l, lua::lua_upvalueindex(STATE_UPVALUE)) else { return Ok(()) };
        let reports = lua::lua_gettop(l);
        capi::check_stack(l, 4);
        for (i, &at) in order.iter().enumerate() {
            let Some(t) = targets.get(at) else { continue };
            let mine = cell.try_borrow().map(|k| k.graph.dependents(&t.name)).unwrap_or_default();
            let reloaded: Vec<&[u8]> = targets
                .iter()
                .map(|t| t.name.as_slice())
                .filter(|n| mine.iter().any(|m| **m == **n))
                .collect();
            if list {
                lua::lua_rawgeti(l, reports, lua::lua_Integer::try_from(i + 1).unwrap_or(0));
            } else {
                lua::lua_pushvalue(l, reports);
            }
            capi::push_bytes(l, b"dependents");
            lua::lua_createtable(l, c_int::try_from(reloaded.len()).unwrap_or(0), 0);
            for (k, name) in reloaded.iter().enumerate() {
                capi::push_bytes(l, name);
                lua::lua_rawseti(l, -2, lua::lua_Integer::try_from(k + 1).unwrap_or(0));
            }
            lua::lua_rawset(l, -3);
            lua::lua_pop(l, 1);
            if !list {
                break;
            }
        }
        Ok(())
    }
}

/// Runs the batch of a `reload` call and pushes its results: for one name, the module and
/// its report; for a list, a list of modules and a list of reports.
unsafe fn run_reload(
    l: *mut lua_State,
    targets: &[engine::Target],
    order: &[usize],
    opts: engine::Options,
    list: bool,
) -> Result<c_int, Error> {
    // SAFETY: the state userdata is upvalue 1; the batch leaves two values per target.
    unsafe {
        let state = lua::lua_upvalueindex(STATE_UPVALUE);
        let name = targets.first().map_or(&b""[..], |t| &t.name);
        let Some(cell) = state::get(l, state) else {
            return Err(Error::new(ErrorKind::Internal, name, "the Lua state is closing"));
        };
        lua::lua_pushvalue(l, state);
        let state = lua::lua_gettop(l);
        let base = state;
        let out = engine::batch(l, cell, state, targets, opts, engine::Mode::Atomic, true)?;
        if let Some(e) = out.first_error() {
            lua::lua_settop(l, base);
            let mut e = e.clone();
            if targets.len() > 1 {
                e.detail.push_str(" (in a transaction: no module was reloaded)");
            }
            return Err(e);
        }
        // the batch left the list of modules and the list of reports, by target
        let (modules, reports) = (base + 1, base + 2);
        capi::check_stack(l, 4);
        if !list {
            lua::lua_rawgeti(l, modules, 1);
            lua::lua_rawgeti(l, reports, 1);
            return Ok(2);
        }
        // results in the order of the names given (a repeated name repeats its results)
        let len = c_int::try_from(order.len()).unwrap_or(0);
        lua::lua_createtable(l, len, 0);
        lua::lua_createtable(l, len, 0);
        for (i, &at) in order.iter().enumerate() {
            let at = lua::lua_Integer::try_from(at + 1).unwrap_or(0);
            let i = lua::lua_Integer::try_from(i + 1).unwrap_or(0);
            lua::lua_rawgeti(l, reports, at);
            lua::lua_rawseti(l, -2, i);
            lua::lua_rawgeti(l, modules, at);
            lua::lua_rawseti(l, -3, i);
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
                    lua::lua_pushnil(l);
                }
                capi::push_bytes(l, message.as_bytes());
                drop(message);
                if raises {
                    lua::lua_error(l);
                }
            }
            2
        }
    }
}

/// `hotreload.on_reload(fn)` -> remove: `fn(name, module, report)` runs after every
/// successful reload; calling `remove()` stops it.
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn on_reload(l: *mut lua_State) -> c_int {
    // SAFETY: forwarded.
    unsafe { listen(l, &AFTER) }
}

/// `hotreload.before_reload(fn)` -> remove: `fn(name, old, new)` runs before each merge;
/// returning `false` refuses the reload.
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn before_reload(l: *mut lua_State) -> c_int {
    // SAFETY: forwarded.
    unsafe { listen(l, &BEFORE) }
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
        lua::luaL_checktype(l, 1, lua::LUA_TSTRING);
        if lua::lua_type(l, 2) <= lua::LUA_TNIL {
            lua::lua_settop(l, 1);
            lua::lua_pushstring(l, c"it is pinned (hotreload.pin): restart to apply it".as_ptr());
        } else {
            lua::luaL_checktype(l, 2, lua::LUA_TSTRING);
        }
        lua::lua_settop(l, 2);
        hooks::set_pinned(l, 1, 2);
        lua::lua_pushboolean(l, 0);
        lua::lua_pushcclosure(l, unpin, 3);
        1
    }
}

/// The function `pin` returns: unpins its module (the first time it is called).
unsafe extern "C-unwind" fn unpin(l: *mut lua_State) -> c_int {
    // SAFETY: the upvalues are the ones `pin` set (name, reason, done flag).
    unsafe {
        let done = lua::lua_toboolean(l, lua::lua_upvalueindex(3)) != 0;
        if !done {
            lua::lua_pushnil(l);
            hooks::set_pinned(l, lua::lua_upvalueindex(1), -1);
            lua::lua_pushboolean(l, 1);
            lua::lua_replace(l, lua::lua_upvalueindex(3));
        }
        lua::lua_pushboolean(l, c_int::from(!done));
        1
    }
}

/// Adds the listener at 1 to list `k` and pushes its remover: a closure over (list key,
/// listener, done flag), so that calling it twice removes one registration only.
unsafe fn listen(l: *mut lua_State, k: &'static u8) -> c_int {
    // SAFETY: the type is checked first; the rest builds plain values.
    unsafe {
        lua::luaL_checktype(l, 1, lua::LUA_TFUNCTION);
        lua::lua_settop(l, 1);
        hooks::add_listener(l, k, 1);
        lua::lua_pushlightuserdata(l, key(k).cast_mut());
        lua::lua_pushvalue(l, 1);
        lua::lua_pushboolean(l, 0);
        lua::lua_pushcclosure(l, unlisten, 3);
        1
    }
}

/// The remover `listen` makes: -> true if it removed the listener, false if already removed.
unsafe extern "C-unwind" fn unlisten(l: *mut lua_State) -> c_int {
    // SAFETY: the upvalues are the ones `listen` set.
    unsafe {
        let done = lua::lua_toboolean(l, lua::lua_upvalueindex(3)) != 0;
        if !done {
            let p = lua::lua_touserdata(l, lua::lua_upvalueindex(1));
            let k = if p == key(&BEFORE).cast_mut() { &BEFORE } else { &AFTER };
            hooks::remove_listener(l, k, lua::lua_upvalueindex(2));
            lua::lua_pushboolean(l, 1);
            lua::lua_replace(l, lua::lua_upvalueindex(3));
        }
        lua::lua_pushboolean(l, c_int::from(!done));
        1
    }
}
