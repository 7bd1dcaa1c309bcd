//! What runs user code around a merge: the module's own hooks (`__unload` on the old module
//! before the merge, `__reload` on the merged one after), the program's listeners
//! (`hotreload.before_reload`, `hotreload.on_reload`), and the report table they receive.
//! All of it runs under `lua_pcall`: a hook's error never escapes as a Lua error. Hooks that
//! run while the reload holds the collector run with it released (`GcPause::lifted`): user
//! code sees the collector as the program left it.

use std::os::raw::c_int;

use mlua::ffi as lua;

use super::Report;
use crate::vm::access;
use crate::vm::capi::{self, lua_State};
use crate::vm::gc::GcPause;
use crate::vm::registry::{AFTER, BEFORE, PINNED, key};

/// What a hook or a listener said.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Go,
    /// It returned `false`.
    Veto,
    /// It raised: Lua's message.
    Failed(String),
}

/// Pushes field `name` of the value at `idx` read raw, nil if that is not a table (a hook is
/// looked up this way); returns its type.
///
/// # Safety
/// A valid index; one free stack slot.
unsafe fn push_raw_field(l: *mut lua_State, idx: c_int, name: &[u8]) -> c_int {
    // SAFETY: one push either way.
    unsafe {
        if lua::lua_type(l, idx) != lua::LUA_TTABLE {
            lua::lua_pushnil(l);
            return lua::LUA_TNIL;
        }
        let idx = lua::lua_absindex(l, idx);
        capi::push_bytes(l, name);
        lua::lua_rawget(l, idx)
    }
}

/// Why module `name` is pinned (`hotreload.pin`), if it is: then it is refused before its
/// new version is even loaded.
///
/// # Safety
/// Three free stack slots; raises only on a memory error.
pub unsafe fn pinned(l: *mut lua_State, name: &[u8]) -> Option<String> {
    // SAFETY: raw reads of the registry; the reason is copied before it is popped.
    unsafe {
        let top = lua::lua_gettop(l);
        let mut reason = None;
        if lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&PINNED)) == lua::LUA_TTABLE {
            capi::push_bytes(l, name);
            if lua::lua_rawget(l, -2) == lua::LUA_TSTRING
                && let access::Val::Str(s) = access::read(l, -1)
            {
                reason = Some(String::from_utf8_lossy(s).into_owned());
            }
        }
        lua::lua_settop(l, top);
        reason
    }
}

/// Pins module `name` (at `name_idx`) with the reason at `reason_idx`, or unpins it if that
/// is nil.
///
/// # Safety
/// Valid indices; inside a C function called by Lua (allocates).
pub unsafe fn set_pinned(l: *mut lua_State, name_idx: c_int, reason_idx: c_int) {
    // SAFETY: raw reads and writes of the registry and of our own table.
    unsafe {
        let (name_idx, reason_idx) =
            (lua::lua_absindex(l, name_idx), lua::lua_absindex(l, reason_idx));
        if lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&PINNED)) != lua::LUA_TTABLE {
            lua::lua_pop(l, 1);
            lua::lua_createtable(l, 0, 2);
            lua::lua_pushvalue(l, -1);
            lua::lua_rawsetp(l, lua::LUA_REGISTRYINDEX, key(&PINNED));
        }
        lua::lua_pushvalue(l, name_idx);
        lua::lua_pushvalue(l, reason_idx);
        lua::lua_rawset(l, -3);
        lua::lua_pop(l, 1);
    }
}

/// Whether the value at `idx` is a table with a (raw) field `name`.
///
/// # Safety
/// A valid index; one free stack slot.
pub unsafe fn has_field(l: *mut lua_State, idx: c_int, name: &[u8]) -> bool {
    // SAFETY: one push, popped.
    unsafe {
        let found = push_raw_field(l, idx, name) != lua::LUA_TNIL;
        lua::lua_pop(l, 1);
        found
    }
}

/// Runs user code `f` with the collector as the program left it (`GcPause::lifted`), or as
/// it is where no reload holds it.
///
/// # Safety
/// As `GcPause::lifted`.
unsafe fn lifted<R>(gc: Option<&mut GcPause>, f: impl FnOnce() -> R) -> R {
    match gc {
        // SAFETY: forwarded.
        Some(gc) => unsafe { gc.lifted(f) },
        None => f(),
    }
}

/// Calls `module.<hook>(module)` if the module is a table with such a function (read raw).
///
/// # Safety
/// `module` absolute; a few free stack slots. Runs user code under protection.
pub unsafe fn call_module_hook(
    l: *mut lua_State,
    gc: Option<&mut GcPause>,
    module: c_int,
    hook: &[u8],
) -> Verdict {
    // SAFETY: raw read, then a protected call; the stack is restored.
    unsafe {
        let top = lua::lua_gettop(l);
        if push_raw_field(l, module, hook) != lua::LUA_TFUNCTION {
            lua::lua_settop(l, top);
            return Verdict::Go;
        }
        lua::lua_pushvalue(l, module);
        let verdict = lifted(gc, || call(l, 1));
        lua::lua_settop(l, top);
        verdict
    }
}

/// Calls every `before_reload` listener with (name, old module, new value) until one
/// refuses or fails.
///
/// # Safety
/// Absolute indices; a few free stack slots. Runs user code under protection.
pub unsafe fn before_listeners(
    l: *mut lua_State,
    mut gc: Option<&mut GcPause>,
    name: &[u8],
    old: c_int,
    new: c_int,
) -> Verdict {
    // SAFETY: the list is read raw; each call is protected; the stack is restored.
    unsafe {
        let top = lua::lua_gettop(l);
        lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&BEFORE));
        let list = top + 1;
        let mut i = 1;
        let mut verdict = Verdict::Go;
        while lua::lua_type(l, list) == lua::LUA_TTABLE
            && lua::lua_rawgeti(l, list, i) == lua::LUA_TFUNCTION
        {
            capi::push_bytes(l, name);
            lua::lua_pushvalue(l, old);
            lua::lua_pushvalue(l, new);
            verdict = lifted(gc.as_deref_mut(), || call(l, 3));
            if verdict != Verdict::Go {
                break;
            }
            i += 1;
        }
        lua::lua_settop(l, top);
        verdict
    }
}

/// Calls every `on_reload` listener with (name, module, report); their errors are collected
/// in `errors`, never raised.
///
/// # Safety
/// Absolute indices; a few free stack slots. Runs user code under protection.
pub unsafe fn after_listeners(
    l: *mut lua_State,
    name: &[u8],
    module: c_int,
    report: c_int,
    errors: &mut Vec<String>,
) {
    // SAFETY: as `before_listeners`.
    unsafe {
        let top = lua::lua_gettop(l);
        lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(&AFTER));
        let list = top + 1;
        let mut i = 1;
        while lua::lua_type(l, list) == lua::LUA_TTABLE
            && lua::lua_rawgeti(l, list, i) == lua::LUA_TFUNCTION
        {
            capi::push_bytes(l, name);
            lua::lua_pushvalue(l, module);
            lua::lua_pushvalue(l, report);
            if let Verdict::Failed(m) = call(l, 3) {
                errors.push(format!(
                    "hotreload: on_reload listener for '{}': {m}",
                    String::from_utf8_lossy(name)
                ));
            }
            i += 1;
        }
        lua::lua_settop(l, top);
    }
}

/// Calls the function below `nargs` arguments on top of the stack, protected; pops them.
unsafe fn call(l: *mut lua_State, nargs: c_int) -> Verdict {
    // SAFETY: a function and its arguments are on top.
    unsafe {
        if lua::lua_pcall(l, nargs, 1, 0) != lua::LUA_OK {
            let message = capi::describe(l, -1);
            lua::lua_pop(l, 1);
            return Verdict::Failed(message);
        }
        let vetoed = lua::lua_type(l, -1) == lua::LUA_TBOOLEAN && lua::lua_toboolean(l, -1) == 0;
        lua::lua_pop(l, 1);
        if vetoed { Verdict::Veto } else { Verdict::Go }
    }
}

/// Pushes the report table of one reload.
///
/// # Safety
/// Allocates (inside a protected call, or where a memory error may raise).
pub unsafe fn push_report(l: *mut lua_State, r: &Report) {
    // SAFETY: fills a fresh table.
    unsafe {
        lua::lua_createtable(l, 0, 12);
        let fields: [(&std::ffi::CStr, u32); 10] = [
            (c"functions_replaced", r.merge.functions_replaced),
            (c"functions_added", r.merge.functions_added),
            (c"functions_kept", r.merge.functions_kept),
            (c"keys_removed", r.merge.keys_removed),
            (c"upvalues_joined", r.merge.upvalues_joined),
            (c"values_taken", r.merge.values_taken),
            (c"values_kept", r.merge.values_kept),
            (c"references_replaced", r.walk.references),
            (c"closures_updated", r.walk.closures_updated),
            (c"closures_left", r.walk.closures_left),
        ];
        for (name, n) in fields {
            lua::lua_pushinteger(l, lua::lua_Integer::from(n));
            lua::lua_setfield(l, -2, name.as_ptr());
        }
        lua::lua_pushnumber(l, r.seconds);
        lua::lua_setfield(l, -2, c"seconds".as_ptr());
        if let Some(changed) = &r.changed {
            lua::lua_createtable(l, c_int::try_from(changed.len()).unwrap_or(0), 0);
            for (i, path) in changed.iter().enumerate() {
                capi::push_bytes(l, path.as_bytes());
                lua::lua_rawseti(l, -2, lua::lua_Integer::try_from(i + 1).unwrap_or(0));
            }
            lua::lua_setfield(l, -2, c"changed".as_ptr());
        }
    }
}

/// Whether the listener list at registry key `k` has any listener.
///
/// # Safety
/// One free stack slot.
pub unsafe fn has_listeners(l: *mut lua_State, k: &'static u8) -> bool {
    // SAFETY: a raw read, popped.
    unsafe {
        lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(k));
        let some = lua::lua_type(l, -1) == lua::LUA_TTABLE && lua::lua_rawlen(l, -1) > 0;
        lua::lua_pop(l, 1);
        some
    }
}

/// Adds the function at `f` to the listener list at registry key `k`. Lists are copied on
/// write, so a listener that adds or removes listeners does not disturb a running call loop.
///
/// # Safety
/// Allocates (may raise a memory error); a few free stack slots.
pub unsafe fn add_listener(l: *mut lua_State, k: &'static u8, f: c_int) {
    // SAFETY: raw reads and writes of a fresh table and the registry.
    unsafe {
        let f = lua::lua_absindex(l, f);
        copy_list(l, k, None);
        let n = lua::lua_rawlen(l, -1) as lua::lua_Integer;
        lua::lua_pushvalue(l, f);
        lua::lua_rawseti(l, -2, n + 1);
        lua::lua_rawsetp(l, lua::LUA_REGISTRYINDEX, key(k));
    }
}

/// Removes (one registration of) the function at `f` from the list at key `k`.
///
/// # Safety
/// As `add_listener`.
pub unsafe fn remove_listener(l: *mut lua_State, k: &'static u8, f: c_int) {
    // SAFETY: as `add_listener`.
    unsafe {
        let f = lua::lua_absindex(l, f);
        copy_list(l, k, Some(f));
        lua::lua_rawsetp(l, lua::LUA_REGISTRYINDEX, key(k));
    }
}

/// Pushes a copy of the list at key `k`, leaving out the first entry equal to `skip`.
unsafe fn copy_list(l: *mut lua_State, k: &'static u8, skip: Option<c_int>) {
    // SAFETY: the old list is read raw while only the copy is written.
    unsafe {
        lua::lua_rawgetp(l, lua::LUA_REGISTRYINDEX, key(k));
        let old = lua::lua_gettop(l);
        let len =
            if lua::lua_type(l, old) == lua::LUA_TTABLE { lua::lua_rawlen(l, old) } else { 0 };
        lua::lua_createtable(l, c_int::try_from(len + 1).unwrap_or(0), 0);
        let mut skip = skip;
        let mut n = 0;
        for i in 1..=len as lua::lua_Integer {
            lua::lua_rawgeti(l, old, i);
            if let Some(s) = skip
                && lua::lua_rawequal(l, -1, s) != 0
            {
                skip = None;
                lua::lua_pop(l, 1);
                continue;
            }
            n += 1;
            lua::lua_rawseti(l, -2, n);
        }
        lua::lua_remove(l, old);
    }
}

/// Sets `report.errors` (the table at `report`) to the list `errors`, unless it is empty.
///
/// # Safety
/// Allocates; two free stack slots.
pub unsafe fn set_errors(l: *mut lua_State, report: c_int, errors: &[String]) {
    if errors.is_empty() {
        return;
    }
    // SAFETY: fills a fresh table and stores it in the report.
    unsafe {
        lua::lua_createtable(l, c_int::try_from(errors.len()).unwrap_or(0), 0);
        for (i, e) in errors.iter().enumerate() {
            capi::push_bytes(l, e.as_bytes());
            lua::lua_rawseti(l, -2, i as lua::lua_Integer + 1);
        }
        lua::lua_setfield(l, report, c"errors".as_ptr());
    }
}
