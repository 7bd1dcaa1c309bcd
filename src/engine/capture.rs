//! Capturing the merge base of every module `require` loads after hotreload is opened: each
//! entry of `package.searchers` (`package.loaders` on LuaJIT) is wrapped so that the Lua
//! loaders it returns are wrapped too, and a wrapped loader mirrors the freshly loaded module
//! (and the globals its top level assigned) before `require` hands it to anyone.
//!
//! `require` behaves exactly as before: same results, same errors, same order of searchers.

use std::os::raw::c_int;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use mlua::ffi as lua;

use super::base::{self, Snapshot};
use super::state::StateCell;
use super::{plan, require, state};
use crate::vm::access::{self, Val};
use crate::vm::capi::{self, lua_State};
use crate::watch::modname::{self, Template};
use crate::watch::{compile, source};

/// Wraps every searcher not wrapped yet (searchers added after `require "hotreload"` are
/// picked up the next time this runs). `state` is the state userdata's index.
///
/// # Safety
/// Inside a protected call (allocates); a few free stack slots.
pub unsafe fn wrap_searchers(l: *mut lua_State, state: c_int) {
    // SAFETY: raw reads and writes of the searchers table; stack restored.
    unsafe {
        let top = lua::lua_gettop(l);
        let state = lua::lua_absindex(l, state);
        let searchers = require::push_searchers(l);
        if searchers != 0 {
            let mut i = 1;
            while lua::lua_rawgeti(l, searchers, i) != lua::LUA_TNIL {
                if !is(l, -1, searcher) {
                    lua::lua_pushvalue(l, state);
                    lua::lua_insert(l, -2);
                    lua::lua_pushcclosure(l, searcher, 2);
                    lua::lua_rawseti(l, searchers, i);
                } else {
                    lua::lua_pop(l, 1);
                }
                i += 1;
            }
        }
        wrap_require(l, state);
        lua::lua_settop(l, top);
    }
}

/// Wraps the global `require` (once) so that it records which module's top level asked
/// for which (`graph`). A program that kept `require` in a local before hotreload was
/// required keeps the original: its requires are not recorded.
///
/// # Safety
/// Inside a protected call (allocates); a few free stack slots; `state` absolute.
unsafe fn wrap_require(l: *mut lua_State, state: c_int) {
    // SAFETY: raw reads and writes of the global table; stack restored.
    unsafe {
        capi::push_globals(l);
        lua::lua_pushstring(l, c"require".as_ptr());
        if lua::lua_rawget(l, -2) == lua::LUA_TFUNCTION && !is(l, -1, required) {
            lua::lua_pushvalue(l, state);
            lua::lua_insert(l, -2);
            lua::lua_pushcclosure(l, required, 2);
            lua::lua_pushstring(l, c"require".as_ptr());
            lua::lua_insert(l, -2);
            lua::lua_rawset(l, -3);
            lua::lua_pop(l, 1);
        } else {
            lua::lua_pop(l, 2);
        }
    }
}

/// Upvalues: state userdata, original `require`. Records the edge from the module whose
/// top level is running to the one asked for, then calls `require` as asked.
unsafe extern "C-unwind" fn required(l: *mut lua_State) -> c_int {
    // SAFETY: the recording owns nothing by the time the original runs; its errors unwind
    // through this frame, which owns nothing either.
    unsafe {
        if let (Some(cell), Val::Str(name)) =
            (state::get(l, lua::lua_upvalueindex(1)), access::read(l, 1))
        {
            let parent = requiring(l, cell, 0);
            if let (Some(parent), Ok(mut known)) = (parent, cell.try_borrow_mut()) {
                known.graph.record(&parent, name);
            }
        }
        let n = lua::lua_gettop(l);
        lua::luaL_checkstack(l, 2, std::ptr::null());
        lua::lua_pushvalue(l, lua::lua_upvalueindex(2));
        lua::lua_insert(l, 1);
        lua::lua_call(l, n, lua::LUA_MULTRET);
        lua::lua_gettop(l)
    }
}

/// The module whose top level runs now on this thread: the innermost `loader` frame's (the
/// first `skip` of them left out), or the module a reload runs if its top level is the
/// innermost; on a coroutine a top level started, that top level's module. Drops the entries
/// of loads that raised: those whose frame is gone.
///
/// # Safety
/// A valid state; one free stack slot.
unsafe fn requiring(l: *mut lua_State, cell: &StateCell, skip: usize) -> Option<Box<[u8]>> {
    match cell.try_borrow() {
        Ok(known) if known.requiring.is_empty() && known.reloading.is_none() => return None,
        Ok(_) => {}
        Err(_) => return None,
    }
    let thread = l as usize;
    // SAFETY: forwarded.
    let frames = unsafe { loader_frames(l) }.saturating_sub(skip);
    let mut known = cell.try_borrow_mut().ok()?;
    let mut here = 0;
    known.requiring.retain(|(t, _)| {
        here += usize::from(*t == thread);
        *t != thread || here <= frames
    });
    let reloading = known.reloading.as_ref();
    if let Some(r) = reloading.filter(|r| r.thread == thread && frames <= r.depth) {
        return Some(r.name.clone());
    }
    let on_this = known.requiring.iter().rev().find(|(t, _)| *t == thread);
    on_this
        .or(known.requiring.last())
        .map(|(_, name)| name.clone())
        .or_else(|| reloading.map(|r| r.name.clone()))
}

/// How many `loader` frames are active on this thread's call stack: the `require` top
/// levels running on it.
///
/// # Safety
/// A valid state; one free stack slot.
pub(crate) unsafe fn loader_frames(l: *mut lua_State) -> usize {
    let mut n = 0;
    // SAFETY: `ar` is filled by lua_getstack before lua_getinfo reads it; one push, popped.
    unsafe {
        let mut ar: lua::lua_Debug = std::mem::zeroed();
        let mut level = 0;
        while lua::lua_getstack(l, level, &mut ar) != 0 {
            if lua::lua_getinfo(l, c"f".as_ptr(), &mut ar) != 0 {
                if is(l, -1, loader) {
                    n += 1;
                }
                lua::lua_pop(l, 1);
            }
            level += 1;
        }
    }
    n
}

/// If the value at `idx` is a loader this module wrapped, replaces it with the original.
///
/// # Safety
/// `idx` valid; one free stack slot.
pub unsafe fn unwrap_loader(l: *mut lua_State, idx: c_int) {
    // SAFETY: a `loader` closure always has the original loader as upvalue 2.
    unsafe {
        let idx = lua::lua_absindex(l, idx);
        if is(l, idx, loader) && !lua::lua_getupvalue(l, idx, 2).is_null() {
            lua::lua_replace(l, idx);
        }
    }
}

/// If the value at `idx` is a searcher this module wrapped, replaces it with the original.
///
/// # Safety
/// `idx` valid; one free stack slot.
pub unsafe fn unwrap_searcher(l: *mut lua_State, idx: c_int) {
    // SAFETY: a `searcher` closure always has the original searcher as upvalue 2.
    unsafe {
        let idx = lua::lua_absindex(l, idx);
        if is(l, idx, searcher) && !lua::lua_getupvalue(l, idx, 2).is_null() {
            lua::lua_replace(l, idx);
        }
    }
}

/// Whether the value at `idx` is a closure of our C function `f`. Both wrappers are plain,
/// non-generic functions of this crate, so each has one address.
unsafe fn is(l: *mut lua_State, idx: c_int, f: lua::lua_CFunction) -> bool {
    // SAFETY: lua_tocfunction accepts any index and returns None for non-C values.
    unsafe { lua::lua_tocfunction(l, idx) }.is_some_and(|g| std::ptr::fn_addr_eq(g, f))
}

/// Upvalues: state userdata, original searcher.
unsafe extern "C-unwind" fn searcher(l: *mut lua_State) -> c_int {
    // SAFETY: errors of the original searcher propagate through this frame, which owns
    // nothing.
    unsafe {
        let searched = now_secs();
        let n = lua::lua_gettop(l);
        lua::lua_pushvalue(l, lua::lua_upvalueindex(2));
        lua::lua_insert(l, 1);
        lua::lua_call(l, n, lua::LUA_MULTRET);
        let results = lua::lua_gettop(l);
        if results >= 1
            && lua::lua_type(l, 1) == lua::LUA_TFUNCTION
            && lua::lua_iscfunction(l, 1) == 0
        {
            lua::luaL_checkstack(l, 4, std::ptr::null());
            lua::lua_pushvalue(l, lua::lua_upvalueindex(1));
            lua::lua_pushvalue(l, 1);
            lua::lua_pushnumber(l, searched);
            lua::lua_pushcclosure(l, loader, 3);
            lua::lua_replace(l, 1);
        }
        results
    }
}

/// Upvalues: state userdata, original loader, when the searcher started (seconds since the
/// epoch). Runs it as `require` asked, then records the base of what it produced.
unsafe extern "C-unwind" fn loader(l: *mut lua_State) -> c_int {
    // SAFETY: until `record_base` the frame owns nothing, so the loader's errors may unwind
    // through it; `record_base` runs protected and drops what it owns before returning.
    unsafe {
        let n = lua::lua_gettop(l);
        lua::luaL_checkstack(l, n + 8, std::ptr::null());
        top_level_runs(l, n);
        capi::push_globals(l);
        let globals = n + 1;
        require::copy_table(l, globals);
        lua::lua_pushvalue(l, lua::lua_upvalueindex(2));
        for i in 1..=n {
            lua::lua_pushvalue(l, i);
        }
        lua::lua_call(l, n, 1);
        if let Some(cell) = state::get(l, lua::lua_upvalueindex(1))
            && let Ok(mut known) = cell.try_borrow_mut()
            && let Some(at) = known.requiring.iter().rposition(|(t, _)| *t == l as usize)
        {
            known.requiring.remove(at);
        }
        let value = n + 3;
        let delta = require::global_delta(l, globals, n + 2, false);
        if lua::lua_type(l, 1) == lua::LUA_TSTRING {
            let mut len = 0usize;
            let name = lua::lua_tolstring(l, 1, &mut len);
            let name = std::slice::from_raw_parts(name.cast::<u8>(), len);
            record_base(l, name, value, delta);
            record_file(l, name, n);
        }
        lua::lua_pushvalue(l, value);
        1
    }
}

/// The module `require` loads (the loader's first argument) starts its top level: what it
/// required before is forgotten, and the requires it makes now are its own.
///
/// # Safety
/// Inside a `loader` frame with its `n` arguments at 1..=n; a free stack slot.
unsafe fn top_level_runs(l: *mut lua_State, n: c_int) {
    // SAFETY: raw reads of the arguments and the upvalue.
    unsafe {
        let Some(cell) = state::get(l, lua::lua_upvalueindex(1)) else { return };
        let Val::Str(name) = (if n >= 1 { access::read(l, 1) } else { Val::Nil }) else {
            return;
        };
        // this frame is a loader frame: the ones below it are the valid entries
        let _ = requiring(l, cell, 1);
        if let Ok(mut known) = cell.try_borrow_mut() {
            known.graph.top_level_runs(name);
            known.requiring.push((l as usize, name.into()));
        }
    }
}

/// The time now, in seconds since the epoch.
fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// How far a file's modification time may lag the clock: a file modified this long before
/// the search may have been saved while it read (its hash is then not trusted).
const MTIME_SLACK: f64 = 0.05;

/// The hash of the file at `file`, if it was last modified before the search that loaded it
/// started (else a save may have raced the load, and the file's bytes are not known to be the
/// ones that ran).
fn hash_if_settled(file: &Path, searched: f64) -> Option<u64> {
    let modified = std::fs::metadata(file).and_then(|m| m.modified()).ok()?;
    let modified = modified.duration_since(UNIX_EPOCH).ok()?;
    // whole seconds: a file system with coarse times (FAT, some network mounts), where a
    // save in the second of the load looks older than it
    if modified.subsec_nanos() == 0 || modified.as_secs_f64() >= searched - MTIME_SLACK {
        return None;
    }
    source::hash_file(file)
}

/// Records the file module `name` was loaded from: the loader's second argument where a
/// file searcher gave one (Lua 5.2+), else the file `package.path` finds for the name as
/// `require` spelt it (LuaJIT's searchers give none), if it exists; and the hash of its
/// bytes, where they are surely the ones that ran (`hash_if_settled`).
///
/// # Safety
/// The loader's `n` arguments at 1..=n; upvalues 1 and 3 are the state userdata and the
/// search time; one free slot.
unsafe fn record_file(l: *mut lua_State, name: &[u8], n: c_int) {
    // SAFETY: raw reads; the strings are copied before anything else runs.
    unsafe {
        let Some(cell) = state::get(l, lua::lua_upvalueindex(1)) else { return };
        let given = match (n >= 2).then(|| access::read(l, 2)) {
            Some(access::Val::Str(s)) => Some(String::from_utf8_lossy(s).into_owned()),
            _ => None,
        };
        let found = given.filter(|p| Path::new(p).is_file()).or_else(|| {
            let path = capi::package_path(l)?;
            let name = std::str::from_utf8(name).ok()?;
            let templates = Template::parse(&path, |_| None);
            modname::search(name, &templates, |p| Path::new(p).is_file())
        });
        let Some(found) = found else { return };
        let Ok(file) = std::fs::canonicalize(&found) else { return };
        // the chunk name the standard searcher gave it: the next compile ahead uses it
        compile::hint(file.clone(), &[b"@".as_slice(), found.as_bytes()].concat());
        let hash = hash_if_settled(&file, lua::lua_tonumber(l, lua::lua_upvalueindex(3)));
        if let Ok(mut known) = cell.try_borrow_mut() {
            known.loaded_from(file, name);
            match hash {
                Some(h) => known.contents.insert(name.into(), h),
                None => known.contents.remove(name),
            };
        }
    }
}

/// Mirrors the fresh module at `value` and the globals in `delta` as the base of `name`.
/// Best effort: a failure only means the next reload has no base.
unsafe fn record_base(l: *mut lua_State, name: &[u8], value: c_int, delta: c_int) {
    // SAFETY: the upvalue is the state userdata; the walk runs protected.
    unsafe {
        let Some(cell) = state::get(l, lua::lua_upvalueindex(1)) else { return };
        lua::lua_pushvalue(l, value);
        if lua::lua_type(l, -1) == lua::LUA_TNIL {
            // the chunk stored itself in package.loaded instead of returning
            lua::lua_pop(l, 1);
            capi::push_loaded(l);
            capi::push_bytes(l, name);
            lua::lua_rawget(l, -2);
            lua::lua_remove(l, -2);
        }
        lua::lua_pushvalue(l, delta);
        let mut mirror = None;
        let mut stop = cell.try_borrow_mut().ok().and_then(|mut known| known.loaded_values.take());
        let walked = capi::protect(l, 2, &mut |l| {
            let none = Snapshot::default();
            let stop = stop.get_or_insert_with(|| plan::stop_set(l));
            let own = access::read(l, 1).object().unwrap_or(0);
            let mut planner = plan::Planner::new(l, &none, 0, stop, own, None);
            lua::lua_pushnil(l);
            let nothing = lua::lua_gettop(l);
            if planner.root(l, nothing, 1).is_ok() {
                planner.globals(l, None, 2);
                let plan = planner.finish(l);
                plan.push(l, plan.functions);
                base::set_functions(l, name, -1);
                mirror = Some(plan.mirror);
            }
            stop.insert(own);
            0
        });
        if let (Ok(_), Ok(mut known)) = (walked, cell.try_borrow_mut()) {
            if let Some(mirror) = mirror {
                known.snapshots.insert(name.into(), mirror);
            }
            known.loaded_values = stop;
        }
    }
}
