//! `poll()` on the Lua thread: takes the changed files that are ready, finds the loaded
//! modules whose file each one is (through `package.path`, see `modname`), and reloads them
//! as one batch in which each module stands on its own: one module failing never stops the
//! others; its message is collected instead of raised.

use std::os::raw::c_int;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::ffi::{self, lua_State};
use crate::modname::{self, Template};
use crate::reload;
use crate::state::StateBox;

/// Modules per batch: a batch holds every plan (both versions of each module) until it is
/// applied, so a checkout that changes thousands of files at once is applied in batches of
/// this many, each with one walk of the heap.
const POLL_BATCH: usize = 256;

/// What one poll did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub reloaded: u32,
    pub errors: Vec<String>,
}

/// Applies the pending changes of the state at `state` (an absolute index). With `budget`,
/// stops starting new reloads once it is spent (at least one file is handled per poll) and
/// leaves the rest queued for the next one.
///
/// # Safety
/// `sb` is the box of the state userdata at `state`; a few free stack slots.
pub unsafe fn poll(
    l: *mut lua_State,
    sb: &StateBox,
    state: c_int,
    budget: Option<Duration>,
    opts: reload::Options,
) -> Outcome {
    let start = Instant::now();
    let (paths, errors) = sb.queue.take_ready(start);
    let mut out = Outcome { reloaded: 0, errors };
    if paths.is_empty() {
        return out;
    }
    // SAFETY: reading `package.path` and `package.loaded` runs protected.
    let templates = match unsafe { package_path(l) } {
        Ok(p) => Template::parse(&p, resolve_dir),
        Err(e) => {
            out.errors.push(format!("hotreload: poll: {e}"));
            sb.queue.put_back(paths, Instant::now()); // tried again at the next poll
            return out;
        }
    };
    // Without a budget the ready files go into batches of up to POLL_BATCH modules; with
    // one, each file is a batch and the budget is checked between them.
    let mut targets: Vec<reload::Target> = Vec::new();
    let n_paths = paths.len();
    for (i, path) in paths.iter().enumerate() {
        if budget.is_some_and(|b| start.elapsed() >= b) && i > 0 {
            sb.queue.put_back(paths.get(i..).unwrap_or_default().to_vec(), Instant::now());
            break;
        }
        if path.is_file() {
            // SAFETY: as above.
            match unsafe { loaded_modules_of(l, sb, path, &templates) } {
                Ok(names) => {
                    for name in names {
                        if !targets.iter().any(|t| t.name == name.as_bytes()) {
                            targets.push(reload::Target { name: name.into_bytes(), source: None });
                        }
                    }
                }
                Err(e) => out.errors.push(format!("hotreload: poll: {e}")),
            }
        } // else deleted since: the module stays as it is
        let full = targets.len() >= POLL_BATCH;
        if (budget.is_some() || full || i + 1 == n_paths) && !targets.is_empty() {
            // SAFETY: the state userdata is at `state`.
            let batch = unsafe {
                reload::batch(l, &sb.data, state, &targets, opts, reload::Mode::Lenient, false)
            };
            match batch {
                Ok(b) => {
                    for r in b.results {
                        match r {
                            Ok(_) => out.reloaded += 1,
                            Err(e) => out.errors.push(e.to_string()),
                        }
                    }
                    out.errors.extend(b.listener_errors);
                }
                Err(e) => out.errors.push(e.to_string()),
            }
            targets.clear();
        }
    }
    out
}

/// Canonical form of a template's directory (`./` is the current directory).
fn resolve_dir(dir: &str) -> Option<String> {
    std::fs::canonicalize(dir).ok()?.into_os_string().into_string().ok()
}

/// `package.path`, read raw.
unsafe fn package_path(l: *mut lua_State) -> Result<String, String> {
    let mut path = String::new();
    // SAFETY: raw reads under protection.
    unsafe {
        ffi::protect(l, 0, &mut |l| {
            path = package_path_raw(l).unwrap_or_default();
            0
        })?;
    }
    Ok(path)
}

/// `package.path`, read raw, if it is a string.
///
/// # Safety
/// Three free stack slots; raises only on a memory error.
pub unsafe fn package_path_raw(l: *mut lua_State) -> Option<String> {
    // SAFETY: raw reads; the string is copied before it is popped.
    unsafe {
        let top = ffi::lua_gettop(l);
        ffi::push_loaded(l);
        ffi::push_bytes(l, b"package");
        let mut path = None;
        if ffi::lua_rawget(l, -2) == ffi::LUA_TTABLE {
            ffi::push_bytes(l, b"path");
            if ffi::lua_rawget(l, -2) == ffi::LUA_TSTRING
                && let ffi::Val::Str(s) = ffi::read(l, -1)
            {
                path = Some(String::from_utf8_lossy(s).into_owned());
            }
        }
        ffi::lua_settop(l, top);
        path
    }
}

/// The loaded modules whose file `path` is: the names `require` loaded it under, and names
/// some template gives for the path (as reported or canonical) whose `searchpath` file is
/// this very file (not one shadowing it earlier in `package.path`); of these, those that
/// `package.loaded` has.
unsafe fn loaded_modules_of(
    l: *mut lua_State,
    sb: &StateBox,
    path: &Path,
    templates: &[Template],
) -> Result<Vec<String>, String> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let spellings: Vec<&str> =
        [path, canonical.as_path()].iter().filter_map(|p| p.to_str()).collect();
    let same_file = |found: String| std::fs::canonicalize(found).is_ok_and(|f| f == canonical);
    let is_file = |p: &str| Path::new(p).is_file();
    let mut names: Vec<String> = modname::names_for(&spellings, templates)
        .into_iter()
        .filter(|name| modname::search(name, templates, is_file).is_some_and(same_file))
        .collect();
    if let Ok(st) = sb.data.try_borrow()
        && let Some(recorded) = st.files.get(&canonical)
    {
        for name in recorded {
            let name = String::from_utf8_lossy(name).into_owned();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        return Ok(names);
    }
    let mut loaded = vec![false; names.len()];
    // SAFETY: raw reads of `_LOADED` under protection.
    unsafe {
        ffi::protect(l, 0, &mut |l| {
            ffi::push_loaded(l);
            for (name, is_loaded) in names.iter().zip(loaded.iter_mut()) {
                ffi::push_bytes(l, name.as_bytes());
                *is_loaded = ffi::lua_rawget(l, -2) != ffi::LUA_TNIL;
                ffi::lua_pop(l, 1);
            }
            0
        })?;
    }
    Ok(names.into_iter().zip(loaded).filter(|(_, is_loaded)| *is_loaded).map(|(n, _)| n).collect())
}

/// For `hotreload.pending()`: files waiting for a poll.
pub fn pending(sb: &StateBox) -> usize {
    sb.queue.len()
}
