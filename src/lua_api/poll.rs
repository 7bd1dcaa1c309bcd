//! `poll()` on the Lua thread: takes the changed files that are ready, finds the loaded
//! modules whose file each one is (`watch::targets`), and reloads them as batches in which
//! each module stands on its own: one module failing never stops the others; its message is
//! collected instead of raised.

use std::os::raw::c_int;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dependents;
use crate::engine::error::ErrorKind;
use crate::engine::state::StateCell;
use crate::engine::{self, Mode, Target};
use crate::vm::capi::lua_State;
use crate::vm::scratch::Compiled;
use crate::watch::modname::Template;
use crate::watch::queue::{Queue, Ready, Templates};
use crate::watch::targets;
use crate::watch::{compile, source};

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
/// leaves the rest queued for the next one. A file whose bytes are those its module was last
/// loaded from is not reloaded (`touch`, a save without changes, a checkout writing the same
/// bytes).
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
    let (files, errors) = queue.take_ready(start);
    let mut out = Outcome { reloaded: 0, errors };
    let mut search = SearchPaths::default();
    // Without a budget the ready files go into batches of up to POLL_BATCH modules; with
    // one, each file is a batch and the budget is checked between them.
    let mut batch = Batch::default();
    for (i, file) in files.iter().enumerate() {
        if budget.is_some_and(|b| start.elapsed() >= b) && i > 0 {
            queue.put_back(files.get(i..).unwrap_or_default().to_vec(), Instant::now());
            break;
        }
        if file.path.is_file() {
            // SAFETY: reading `package.path` and `package.loaded` runs protected.
            match unsafe { changed_modules(l, cell, file, &mut search) } {
                Ok(changed) => batch.add(changed),
                Err(e) => {
                    out.errors.push(format!("hotreload: poll: {e}"));
                    queue.put_back(files.get(i..).unwrap_or_default().to_vec(), Instant::now());
                    break;
                }
            }
        } // else deleted since: the module stays as it is
        let full = batch.targets.len() >= POLL_BATCH;
        if budget.is_some() || full || i + 1 == files.len() {
            // SAFETY: the state userdata is at `state`.
            unsafe { batch.run(l, (cell, state), opts, &mut out) };
        }
    }
    // SAFETY: as above.
    unsafe { batch.run(l, (cell, state), opts, &mut out) };
    out
}

/// The modules of one batch, with the hash of the file each is reloaded from.
#[derive(Default)]
struct Batch {
    targets: Vec<Target>,
    hashes: Vec<Option<u64>>,
}

impl Batch {
    fn add(&mut self, changed: Changed) {
        for name in changed.names {
            if !self.targets.iter().any(|t| t.name == name.as_bytes()) {
                let mut target = Target::named(name.into_bytes());
                target.ahead = changed.ahead.clone();
                self.targets.push(target);
                self.hashes.push(changed.hash);
            }
        }
    }

    /// Reloads the batch's modules, each on its own, and empties it.
    ///
    /// # Safety
    /// As `poll`.
    unsafe fn run(
        &mut self,
        l: *mut lua_State,
        (cell, state): (&StateCell, c_int),
        opts: engine::Options,
        out: &mut Outcome,
    ) {
        if self.targets.is_empty() {
            return;
        }
        if opts.dependents {
            // SAFETY: forwarded.
            unsafe { self.run_chains(l, (cell, state), opts, out) };
            return;
        }
        // SAFETY: forwarded.
        let done =
            unsafe { engine::batch(l, cell, state, &self.targets, opts, Mode::Lenient, false) };
        match done {
            Ok(b) => {
                let reloaded = b.results.iter().zip(&self.targets).zip(&self.hashes);
                let mut known = cell.try_borrow_mut().ok();
                for ((r, t), hash) in reloaded {
                    match r {
                        Ok(_) => {
                            out.reloaded += 1;
                            if let (Some(known), Some(h)) = (known.as_mut(), hash) {
                                known.contents.insert(t.name.as_slice().into(), *h);
                            }
                        }
                        Err(e) => out.errors.push(e.to_string()),
                    }
                }
                out.errors.extend(b.listener_errors);
            }
            Err(e) => out.errors.push(e.to_string()),
        }
        self.targets.clear();
        self.hashes.clear();
    }
}

impl Batch {
    /// `dependents = true`: each changed module with the modules that required it, as one
    /// transaction (chains that share a module as one); a chain that fails changes nothing,
    /// and the others go on.
    ///
    /// # Safety
    /// As `poll`.
    unsafe fn run_chains(
        &mut self,
        l: *mut lua_State,
        (cell, state): (&StateCell, c_int),
        opts: engine::Options,
        out: &mut Outcome,
    ) {
        let roots: Vec<Box<[u8]>> = self.targets.iter().map(|t| t.name.as_slice().into()).collect();
        // SAFETY: forwarded.
        let chains = unsafe { dependents::chains(l, cell, &roots) };
        for chain in chains {
            let targets: Vec<Target> = chain
                .iter()
                .map(|n| {
                    let mut target = Target::named(n.to_vec());
                    // the changed module's file, compiled ahead; its dependents are not
                    target.ahead =
                        self.targets.iter().find(|t| *t.name == **n).and_then(|t| t.ahead.clone());
                    target
                })
                .collect();
            // SAFETY: forwarded.
            let done =
                unsafe { engine::batch(l, cell, state, &targets, opts, Mode::Atomic, false) };
            match done {
                Ok(b) => {
                    let failed = b.results.iter().filter_map(|r| r.as_ref().err());
                    let cause = failed.clone().find(|e| e.kind != ErrorKind::Aborted);
                    match cause.or(failed.clone().next()) {
                        Some(e) => out.errors.push(format!(
                            "{e} (with the modules that required it: none was reloaded)"
                        )),
                        None => {
                            out.reloaded += u32::try_from(targets.len()).unwrap_or(u32::MAX);
                            let mut known = cell.try_borrow_mut().ok();
                            let roots = self.targets.iter().zip(&self.hashes);
                            for (t, h) in
                                roots.filter(|(t, _)| chain.iter().any(|c| **c == *t.name))
                            {
                                if let (Some(known), Some(h)) = (known.as_mut(), h) {
                                    known.contents.insert(t.name.as_slice().into(), *h);
                                }
                            }
                        }
                    }
                    out.errors.extend(b.listener_errors);
                }
                Err(e) => out.errors.push(e.to_string()),
            }
        }
        self.targets.clear();
        self.hashes.clear();
    }
}

/// The templates of each search path met in this poll, resolved once.
#[derive(Default)]
struct SearchPaths(Vec<(Templates, Vec<Template>)>);

impl SearchPaths {
    /// The templates of `given`.
    ///
    /// # Safety
    /// Three free stack slots.
    unsafe fn get(&mut self, l: *mut lua_State, given: &Templates) -> Result<usize, String> {
        if let Some(i) = self.0.iter().position(|(t, _)| t == given) {
            return Ok(i);
        }
        // SAFETY: forwarded.
        let templates = unsafe { targets::templates(l, given)? };
        self.0.push((given.clone(), templates));
        Ok(self.0.len() - 1)
    }
}

/// The loaded modules a changed file is (without those whose last load was from these very
/// bytes), the hash of its bytes, and its chunk compiled ahead if that was compiled from
/// these bytes.
#[derive(Default)]
struct Changed {
    names: Vec<String>,
    hash: Option<u64>,
    ahead: Option<Arc<Compiled>>,
}

/// What the changed file is (`Changed`).
///
/// # Safety
/// Three free stack slots.
unsafe fn changed_modules(
    l: *mut lua_State,
    cell: &StateCell,
    file: &Ready,
    search: &mut SearchPaths,
) -> Result<Changed, String> {
    let mut which = Vec::with_capacity(file.templates.len());
    for given in &file.templates {
        // SAFETY: forwarded.
        which.push(unsafe { search.get(l, given)? });
    }
    let paths: Vec<&[Template]> =
        which.iter().filter_map(|&i| search.0.get(i)).map(|(_, t)| t.as_slice()).collect();
    let recorded = recorded_names(cell, &file.path);
    // SAFETY: forwarded.
    let names = unsafe { targets::loaded_modules_of(l, &recorded, &file.path, &paths)? };
    if names.is_empty() {
        return Ok(Changed::default());
    }
    let hash = source::hash_file(&file.path);
    let known = cell.try_borrow().ok();
    let names = names
        .into_iter()
        .filter(|name| {
            let last = known.as_ref().and_then(|k| k.contents.get(name.as_bytes()).copied());
            hash.is_none() || last != hash
        })
        .collect();
    let ahead = compile::lookup(&file.path).filter(|c| Some(c.hash) == hash);
    Ok(Changed { names, hash, ahead })
}

/// The names `require` loaded the file at `path` under (see `engine::state`).
fn recorded_names(cell: &StateCell, path: &Path) -> Vec<Box<[u8]>> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    cell.try_borrow()
        .ok()
        .and_then(|known| known.files.get(&canonical).cloned())
        .unwrap_or_default()
}
