//! Which loaded modules a changed file is: the names `require` loaded it under (recorded by
//! the engine, passed in), and the names `package.path`'s templates give its path, spelt as
//! reported or canonically, whose `searchpath` file is this very file.

use std::path::Path;

use mlua::ffi as lua;

use super::modname::{self, Template};
use super::queue::Templates;
use crate::vm::capi::{self, lua_State};

/// Canonical form of a template's directory (`./` is the current directory).
fn resolve_dir(dir: &str) -> Option<String> {
    std::fs::canonicalize(dir).ok()?.into_os_string().into_string().ok()
}

/// The templates of a watch's search path (`None`: `package.path`, read raw under
/// protection), their directories resolved.
///
/// # Safety
/// Three free stack slots.
pub(crate) unsafe fn templates(
    l: *mut lua_State,
    given: &Templates,
) -> Result<Vec<Template>, String> {
    if let Some(path) = given {
        return Ok(Template::parse(path, resolve_dir));
    }
    let mut path = String::new();
    // SAFETY: raw reads under protection.
    unsafe {
        capi::protect(l, 0, &mut |l| {
            path = capi::package_path(l).unwrap_or_default();
            0
        })?;
    }
    Ok(Template::parse(&path, resolve_dir))
}

/// The loaded modules whose file `path` is: the names `require` loaded it under, and names
/// some search path's templates give for the path (as reported or canonical) whose
/// `searchpath` file in that search path is this very file (not one shadowing it earlier);
/// of these, those that `package.loaded` has.
///
/// # Safety
/// Three free stack slots.
pub(crate) unsafe fn loaded_modules_of(
    l: *mut lua_State,
    recorded: &[Box<[u8]>],
    path: &Path,
    search_paths: &[&[Template]],
) -> Result<Vec<String>, String> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let spellings: Vec<&str> =
        [path, canonical.as_path()].iter().filter_map(|p| p.to_str()).collect();
    let same_file = |found: String| std::fs::canonicalize(found).is_ok_and(|f| f == canonical);
    let is_file = |p: &str| Path::new(p).is_file();
    let mut names: Vec<String> = Vec::new();
    for templates in search_paths {
        for name in modname::names_for(&spellings, templates) {
            if !names.contains(&name)
                && modname::search(&name, templates, is_file).is_some_and(same_file)
            {
                names.push(name);
            }
        }
    }
    for name in recorded {
        let name = String::from_utf8_lossy(name).into_owned();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Ok(names);
    }
    let mut loaded = vec![false; names.len()];
    // SAFETY: raw reads of `_LOADED` under protection.
    unsafe {
        capi::protect(l, 0, &mut |l| {
            capi::push_loaded(l);
            for (name, is_loaded) in names.iter().zip(loaded.iter_mut()) {
                capi::push_bytes(l, name.as_bytes());
                *is_loaded = lua::lua_rawget(l, -2) != lua::LUA_TNIL;
                lua::lua_pop(l, 1);
            }
            0
        })?;
    }
    Ok(names.into_iter().zip(loaded).filter(|(_, is_loaded)| *is_loaded).map(|(n, _)| n).collect())
}
