//! `hotreload.dependents(name)`, and the chains of reloads `dependents = true` makes: a
//! module with the loaded modules that required it, directly or not (`engine::graph`).

use std::os::raw::c_int;

use mlua::ffi as lua;

use super::STATE_UPVALUE;
use crate::engine::state::{self, StateCell};
use crate::vm::access::{self, Val};
use crate::vm::capi::{self, lua_State};

type Name = Box<[u8]>;

/// `hotreload.dependents(name)` -> list of the loaded modules whose top level required
/// `name`, directly or through others, nearest first.
///
/// # Safety
/// Called by Lua as a closure made by `open`.
pub unsafe extern "C-unwind" fn dependents(l: *mut lua_State) -> c_int {
    // SAFETY: the name is checked first; the list is built by raw writes, after the names
    // are copied out of the state (nothing owned is alive if a write raises).
    unsafe {
        lua::luaL_checktype(l, 1, lua::LUA_TSTRING);
        let names: Vec<Name> =
            match (state::get(l, lua::lua_upvalueindex(STATE_UPVALUE)), access::read(l, 1)) {
                (Some(cell), Val::Str(name)) => loaded_dependents(l, cell, name),
                _ => Vec::new(),
            };
        lua::lua_createtable(l, c_int::try_from(names.len()).unwrap_or(0), 0);
        let list = lua::lua_gettop(l);
        for (i, name) in names.iter().enumerate() {
            capi::push_bytes(l, name);
            lua::lua_rawseti(l, list, lua::lua_Integer::try_from(i + 1).unwrap_or(0));
        }
        drop(names);
        1
    }
}

/// The dependents of `name` that `package.loaded` still has, nearest first.
///
/// # Safety
/// Three free stack slots.
pub(crate) unsafe fn loaded_dependents(
    l: *mut lua_State,
    cell: &StateCell,
    name: &[u8],
) -> Vec<Name> {
    let all = cell.try_borrow().map(|k| k.graph.dependents(name)).unwrap_or_default();
    // SAFETY: forwarded.
    let loaded = unsafe { are_loaded(l, &all) };
    all.into_iter().zip(loaded).filter(|(_, is)| *is).map(|(n, _)| n).collect()
}

/// The chains of reloads for changes to `roots`: each with its loaded dependents, chains
/// that share a module merged, each in dependency order (`Graph::chains`).
///
/// # Safety
/// Three free stack slots.
pub(crate) unsafe fn chains(l: *mut lua_State, cell: &StateCell, roots: &[Name]) -> Vec<Vec<Name>> {
    let Ok(known) = cell.try_borrow() else { return vec![roots.to_vec()] };
    let mut candidates: Vec<Name> = Vec::new();
    for root in roots {
        candidates.extend(known.graph.dependents(root));
    }
    drop(known);
    // SAFETY: forwarded.
    let loaded = unsafe { are_loaded(l, &candidates) };
    let keep: Vec<&Name> =
        candidates.iter().zip(&loaded).filter(|(_, is)| **is).map(|(n, _)| n).collect();
    match cell.try_borrow() {
        Ok(known) => known.graph.chains(roots, |m| keep.iter().any(|k| ***k == *m)),
        Err(_) => vec![roots.to_vec()],
    }
}

/// Whether `package.loaded` has each of `names` (read raw, under protection; all false if
/// it cannot be read).
///
/// # Safety
/// Three free stack slots.
unsafe fn are_loaded(l: *mut lua_State, names: &[Name]) -> Vec<bool> {
    let mut loaded = vec![false; names.len()];
    if names.is_empty() {
        return loaded;
    }
    // SAFETY: raw reads under protection; the flags are plain data.
    let _ = unsafe {
        capi::protect(l, 0, &mut |l| {
            capi::push_loaded(l);
            for (name, is) in names.iter().zip(loaded.iter_mut()) {
                capi::push_bytes(l, name);
                *is = lua::lua_rawget(l, -2) != lua::LUA_TNIL;
                lua::lua_pop(l, 1);
            }
            0
        })
    };
    loaded
}
