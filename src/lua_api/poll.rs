//! `poll()` on the Lua thread: takes the changed files that are ready, finds the loaded
//! modules whose file each one is (`watch::targets`), and reloads them as batches in which
//! each module stands on its own: one module failing never stops the others; its message is
//! collected instead of raised.

use std::os::raw::c_int;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::state::StateCell;
use crate::engine::{self, Mode, Target};
use crate::vm::capi::lua_State;
use crate::watch::queue::Queue;
use crate::watch::targets;

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
/// `cell` is the engine state of the userdata at `state`; a few free stack slots.
pub(crate) unsafe fn poll(
    l: *mut lua_State,
    (cell, state): (&StateCell, c_int),
    queue: &Arc<Queue>,
    budget: Option<Duration>,
    opts: engine::Options,
) -> Outcome {
    let start = Instant::now();
    let (paths, errors) = queue.take_ready(start);
    let mut out = Outcome { reloaded: 0, errors };
    if paths.is_empty() {
        return out;
    }
    // SAFETY: reading `package.path` and `package.loaded` runs protected.
    let templates = match unsafe { targets::templates(l) } {
        Ok(t) => t,
        Err(e) => {
            out.errors.push(format!("hotreload: poll: {e}"));
            queue.put_back(paths, Instant::now()); // tried again at the next poll
            return out;
        }
    };
    // Without a budget the ready files go into batches of up to POLL_BATCH modules; with
    // one, each file is a batch and the budget is checked between them.
    let mut batch: Vec<Target> = Vec::new();
    let n_paths = paths.len();
    for (i, path) in paths.iter().enumerate() {
        if budget.is_some_and(|b| start.elapsed() >= b) && i > 0 {
            queue.put_back(paths.get(i..).unwrap_or_default().to_vec(), Instant::now());
            break;
        }
        if path.is_file() {
            let recorded = recorded_names(cell, path);
            // SAFETY: as above.
            match unsafe { targets::loaded_modules_of(l, &recorded, path, &templates) } {
                Ok(names) => {
                    for name in names {
                        if !batch.iter().any(|t| t.name == name.as_bytes()) {
                            batch.push(Target { name: name.into_bytes(), source: None });
                        }
                    }
                }
                Err(e) => out.errors.push(format!("hotreload: poll: {e}")),
            }
        } // else deleted since: the module stays as it is
        let full = batch.len() >= POLL_BATCH;
        if (budget.is_some() || full || i + 1 == n_paths) && !batch.is_empty() {
            // SAFETY: the state userdata is at `state`.
            let done = unsafe { engine::batch(l, cell, state, &batch, opts, Mode::Lenient, false) };
            match done {
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
            batch.clear();
        }
    }
    out
}

/// The names `require` loaded the file at `path` under (see `engine::state`).
fn recorded_names(cell: &StateCell, path: &Path) -> Vec<Box<[u8]>> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    cell.try_borrow()
        .ok()
        .and_then(|known| known.files.get(&canonical).cloned())
        .unwrap_or_default()
}
