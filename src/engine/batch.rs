//! One batch of reloads through the steps the engine's module doc lists: the jobs, the
//! protected run, and what is kept once it is over.

use std::collections::HashSet;
use std::os::raw::c_int;
use std::sync::Arc;
use std::time::Instant;

use mlua::ffi as lua;

use super::apply::{self, Undo};
use super::base::{self, Snapshot};
use super::capture;
use super::error::{Error, ErrorKind};
use super::hooks::{self, Verdict};
use super::load::{self, Source};
pub(crate) use super::plan::Counts;
use super::plan::{self, Plan, Planner};
use super::state::{Phase, Reloading, StateCell};
use super::walk;
use crate::vm::access;
use crate::vm::capi::{self, lua_State};
use crate::vm::gc::GcPause;
use crate::vm::registry::AFTER;
use crate::vm::scratch::Compiled;

/// How to reload (`hotreload.reload(name, opts)`, `hotreload.defaults`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Replace old functions everywhere in the VM, not only in the module.
    pub replace: bool,
    /// Accept precompiled bytecode as source text.
    pub binary: bool,
    /// Reload the modules that required the ones reloaded too (`graph`), in one
    /// transaction (the caller makes the batch: see `lua_api`).
    pub dependents: bool,
    /// Name what each reload changed, by key path (`Report::changed`). Off by default: it
    /// dumps the code of every function the module keeps, to compare it.
    pub changes: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { replace: true, binary: false, dependents: false, changes: false }
    }
}

/// One module of a batch, and the text to reload it from instead of its file.
pub struct Target {
    pub name: Vec<u8>,
    pub source: Option<Source>,
    /// Its file, compiled ahead (`poll`): used where the standard file searcher would load
    /// that file (`load::find_loader`).
    pub ahead: Option<Arc<Compiled>>,
}

impl Target {
    /// The module `name`, from wherever `require` finds it.
    pub fn named(name: Vec<u8>) -> Target {
        Target { name, source: None, ahead: None }
    }
}

/// How a failure in one module affects the others of its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A transaction: if one module fails, none is reloaded.
    Atomic,
    /// Each module on its own: the others are reloaded (`poll`).
    Lenient,
}

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub merge: Counts,
    pub walk: walk::Outcome,
    /// Time the whole batch took.
    pub seconds: f64,
    /// What it changed, by key path (with `changes`).
    pub changed: Option<Vec<String>>,
}

/// What a batch did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Per target, in order.
    pub results: Vec<Result<Report, Error>>,
    /// Messages of `on_reload` listeners that raised (they never undo a reload).
    pub listener_errors: Vec<String>,
}

impl Outcome {
    /// The error that made a batch fail: the first one that is not a mere abort.
    pub fn first_error(&self) -> Option<&Error> {
        let mut errors = self.results.iter().filter_map(|r| r.as_ref().err());
        let first = errors.clone().find(|e| e.kind != ErrorKind::Aborted);
        first.or_else(|| errors.next())
    }
}

/// What `luaL_checkstack` adds to a request on LuaJIT (mlua's compat version asks for
/// `LUA_MINSTACK` more): a non-raising check must leave room for it, or the raising check
/// after it fails, and on LuaJIT a raise here cannot be caught.
const CHECK_SLACK: c_int = 40;

/// Stack slots checked for before each step of one job.
const JOB_STACK: c_int = 16 + CHECK_SLACK;

/// A job's values, kept in the batch's table of held values (not on the Lua stack, which
/// LuaJIT limits to about 8000 slots per C function: a batch of any size fits): its new
/// value, the globals its top level assigned, its running value, and its plan's anchors.
const NEW: i64 = 1;
const DELTA: i64 = 2;
const LIVE: i64 = 3;
const ANCHORS: i64 = 4;

/// The key of value `k` of job `i` in the table of held values.
fn held_key(i: usize, k: i64) -> lua::lua_Integer {
    lua::lua_Integer::try_from(i).map_or(0, |i| 4 * i + k)
}

/// Where a job's values are while a step uses them.
#[derive(Clone, Copy)]
struct Values {
    new: c_int,
    delta: c_int,
    live: c_int,
}

/// The failure of a batch that does not fit the Lua stack.
fn stack_full(t: &Target, modules: usize) -> Error {
    Error::new(
        ErrorKind::TooMany,
        &t.name,
        format!(
            "cannot reload {modules} modules in one batch: the Lua stack is full; reload \
             fewer at a time"
        ),
    )
}

/// One target's progress through the steps.
#[derive(Default)]
struct Job {
    /// its values are held (`NEW`, `DELTA`, `LIVE`): the new version loaded and ran
    loaded: bool,
    /// no running value: a first load, for which no hook runs
    first_load: bool,
    base: Option<Snapshot>,
    plan: Option<Plan>,
    undo: Vec<Undo>,
    /// the new version's mirror once the reload is done
    mirror: Option<Snapshot>,
    error: Option<Error>,
    /// what the running version's top level required (`graph`), put back if this job fails
    required: Option<Vec<Box<[u8]>>>,
}

/// Reloads (or first loads) the modules of `targets` as one batch. With `push`, and if every
/// target succeeded, leaves on the stack the list of the targets' modules and the list of
/// their report tables, in order; otherwise leaves nothing. Report tables are only made for
/// the stack or for listeners.
///
/// # Safety
/// `state` is the absolute index of the state userdata behind `cell`; a few free stack slots.
pub unsafe fn batch(
    l: *mut lua_State,
    cell: &StateCell,
    state: c_int,
    targets: &[Target],
    opts: Options,
    mode: Mode,
    push: bool,
) -> Result<Outcome, Error> {
    let start = Instant::now();
    let mut jobs = begin(cell, targets)?;
    // the modules this batch marked busy (not those an outer reload is busy with)
    let owned: Vec<&Target> =
        targets.iter().zip(&jobs).filter(|(_, j)| j.error.is_none()).map(|(t, _)| t).collect();
    let mut out = Outcome::default();
    let mut gc: Option<GcPause> = None;
    let mut plans: Vec<Plan> = Vec::new();
    let mut reports: Vec<Option<Report>> = Vec::new();
    // SAFETY: everything the closure owns lives in this frame (jobs, out, gc, plans), so an
    // error unwinding out of the protected call loses nothing that needs dropping.
    let outcome = unsafe {
        lua::lua_pushvalue(l, state);
        capi::protect(l, 1, &mut |l| {
            let mut run = Run { cell, targets, jobs: &mut jobs, mode, opts, held: 0, globals: 0 };
            capture::wrap_searchers(l, 1);
            capi::push_loaded(l);
            let loaded = lua::lua_gettop(l);
            forget_dropped(l, cell, loaded);
            capi::push_globals(l);
            lua::lua_createtable(l, c_int::try_from(4 * targets.len()).unwrap_or(0), 0);
            run.held = loaded + 2;
            run.load_all(l, loaded, loaded + 1);
            enter(cell, &owned, Phase::Consenting);
            run.consent_all(l);
            enter(cell, &owned, Phase::Merging);
            let pause = gc.insert(GcPause::new(l));
            run.plan_all(l, pause);
            run.apply_all(l, loaded, pause);
            run.keep_functions(l);
            plans = run.take_plans();
            let walked = if opts.replace && !plans.is_empty() {
                walk::replace(l, &mut plans)
            } else {
                vec![walk::Outcome::default(); plans.len()]
            };
            capi::flush_jit(l);
            gc = None;
            reports = run.reports(&plans, walked, start.elapsed().as_secs_f64());
            enter(cell, &owned, Phase::Reporting);
            run.report(l, loaded, &reports, push, &mut out.listener_errors)
        })
    };
    drop(gc);
    drop(plans);
    finish(cell, targets, jobs, reports, outcome.map(|_| out))
}

/// Checks and marks the modules of a batch busy, and takes their bases.
fn begin(cell: &StateCell, targets: &[Target]) -> Result<Vec<Job>, Error> {
    let mut jobs: Vec<Job> = targets.iter().map(|_| Job::default()).collect();
    let Ok(mut known) = cell.try_borrow_mut() else {
        let name = targets.first().map_or(&b""[..], |t| &t.name);
        return Err(Error::new(ErrorKind::Internal, name, "state in use"));
    };
    let mut seen: HashSet<&[u8]> = HashSet::with_capacity(targets.len());
    for (t, job) in targets.iter().zip(jobs.iter_mut()) {
        if let Some(phase) = known.busy.get(t.name.as_slice()) {
            job.error = Some(Error::new(ErrorKind::Busy, &t.name, phase.doing()));
            continue;
        }
        if !seen.insert(&t.name) {
            job.error = Some(Error::new(ErrorKind::Busy, &t.name, "once more in its batch"));
            continue;
        }
        known.busy.insert(t.name.as_slice().into(), Phase::Loading);
        job.base = known.snapshots.remove(t.name.as_slice());
    }
    // a batch may change any module's value: the next base is taken with a fresh set
    known.loaded_values = None;
    Ok(jobs)
}

/// Unmarks the batch's modules, keeps each new base (or gives back the old one), and turns
/// the protected run's outcome into the batch's.
fn finish(
    cell: &StateCell,
    targets: &[Target],
    mut jobs: Vec<Job>,
    reports: Vec<Option<Report>>,
    outcome: Result<Outcome, String>,
) -> Result<Outcome, Error> {
    if let Ok(mut known) = cell.try_borrow_mut() {
        if outcome.is_err() {
            known.reloading = None; // a raise skipped putting it back
        }
        for (t, job) in targets.iter().zip(jobs.iter_mut()) {
            // the running version stays: so does what its top level required
            if let (Some(_), Some(required)) = (&job.error, &job.required) {
                known.graph.restore(&t.name, required);
            }
            if job.error.as_ref().is_none_or(|e| e.kind != ErrorKind::Busy) {
                known.busy.remove(t.name.as_slice());
            }
            if job.error.is_none() {
                known.contents.remove(t.name.as_slice());
            }
            if let Some(s) = job.mirror.take().or_else(|| job.base.take()) {
                known.snapshots.insert(t.name.as_slice().into(), s);
            }
        }
    }
    match outcome {
        Ok(mut out) => {
            let mut reports = reports.into_iter();
            out.results = jobs
                .into_iter()
                .zip(targets)
                .map(|(job, t)| match (job.error, reports.next().flatten()) {
                    (None, Some(report)) => Ok(report),
                    (Some(e), _) => Err(e),
                    (None, None) => Err(ErrorKind::Internal.with(t, "no result")),
                })
                .collect();
            Ok(out)
        }
        Err(message) => {
            let name = targets.first().map_or(&b""[..], |t| &t.name);
            Err(Error::new(ErrorKind::Internal, name, message))
        }
    }
}

/// Forgets what is kept of a few modules the program dropped from `package.loaded` since
/// (see `base::prune_functions`).
///
/// # Safety
/// Inside the protected call; `loaded` is `package.loaded` (absolute).
unsafe fn forget_dropped(l: *mut lua_State, cell: &StateCell, loaded: c_int) {
    // the state is not borrowed while Lua runs (a memory error would leave it borrowed)
    let Ok(mut cursor) = cell.try_borrow_mut().map(|mut k| k.prune_cursor.take()) else {
        return;
    };
    // SAFETY: forwarded.
    let dropped = unsafe { base::prune_functions(l, loaded, &mut cursor, base::PRUNE_PER_BATCH) };
    if let Ok(mut known) = cell.try_borrow_mut() {
        known.prune_cursor = cursor;
        for name in &dropped {
            known.snapshots.remove(name);
        }
    }
}

/// Records that the batch's modules are in `phase` (for the message of a reload they refuse).
fn enter(cell: &StateCell, targets: &[&Target], phase: Phase) {
    if let Ok(mut known) = cell.try_borrow_mut() {
        for t in targets {
            if let Some(p) = known.busy.get_mut(t.name.as_slice()) {
                *p = phase;
            }
        }
    }
}

/// The steps of one batch, inside the protected call.
struct Run<'a> {
    cell: &'a StateCell,
    targets: &'a [Target],
    jobs: &'a mut [Job],
    mode: Mode,
    opts: Options,
    /// stack index of the table of held values (see `NEW`)
    held: c_int,
    /// stack index of the global table
    globals: c_int,
}

impl Run<'_> {
    /// Jobs still going, with their targets.
    fn going(&mut self) -> impl Iterator<Item = (&Target, &mut Job)> {
        self.targets.iter().zip(self.jobs.iter_mut()).filter(|(_, j)| j.error.is_none())
    }

    /// Records a failure; in a transaction, every other job is aborted with it.
    fn fail(&mut self, i: usize, e: Error) {
        if let Some(job) = self.jobs.get_mut(i) {
            job.error = Some(e);
        }
        if self.mode == Mode::Atomic {
            for (t, job) in self.targets.iter().zip(self.jobs.iter_mut()) {
                if job.error.is_none() {
                    job.error = Some(Error::new(ErrorKind::Aborted, &t.name, ""));
                }
            }
        }
    }

    fn failed(&self) -> Vec<bool> {
        self.jobs.iter().map(|j| j.error.is_some()).collect()
    }

    /// Whether job `i` exists and has not failed.
    fn is_going(&self, i: usize) -> bool {
        self.jobs.get(i).is_some_and(|j| j.error.is_none())
    }

    /// Pushes the held values of job `i` (loaded) for a step.
    ///
    /// # Safety
    /// Three free stack slots.
    unsafe fn push_values(&self, l: *mut lua_State, i: usize) -> Values {
        // SAFETY: raw reads of the table of held values.
        unsafe {
            for k in [NEW, DELTA, LIVE] {
                lua::lua_rawgeti(l, self.held, held_key(i, k));
            }
            let top = lua::lua_gettop(l);
            Values { new: top - 2, delta: top - 1, live: top }
        }
    }

    /// Step 1: each new version, and each running value, held.
    unsafe fn load_all(&mut self, l: *mut lua_State, loaded: c_int, globals: c_int) {
        self.globals = globals;
        // a module refused before the batch started (busy) fails a transaction too
        let refused =
            self.jobs.iter_mut().enumerate().find_map(|(i, j)| Some((i, j.error.take()?)));
        if let Some((i, e)) = refused {
            self.fail(i, e);
        }
        for i in 0..self.targets.len() {
            if !self.is_going(i) {
                continue;
            }
            let Some(t) = self.targets.get(i) else { break };
            // a pinned module is never run: refused before its new version is loaded
            // SAFETY: a raw read of the registry.
            if let Some(reason) = unsafe { hooks::pinned(l, &t.name) } {
                self.fail(i, ErrorKind::Pinned.with(t, reason));
                continue;
            }
            // SAFETY: the loaders run under lua_pcall; the job's values are held, and the
            // stack is as it was after each job.
            let result = unsafe {
                if lua::lua_checkstack(l, JOB_STACK) == 0 {
                    self.fail(i, stack_full(t, self.targets.len()));
                    continue;
                }
                let loader = lua::lua_gettop(l) + 1;
                let found = match &t.source {
                    Some(src) => load::load_source(l, &t.name, src, self.opts.binary),
                    None => {
                        let found = load::find_loader(l, &t.name, t.ahead.as_deref());
                        let ahead =
                            matches!(found, Ok(true) | Err(load::LoadError::FailedAhead(_)));
                        if ahead && let Ok(mut known) = self.cell.try_borrow_mut() {
                            known.compiled_ahead += 1;
                        }
                        found.map(drop)
                    }
                };
                match found {
                    Err(load::LoadError::NotFound(m)) => Err(ErrorKind::NotFound.with(t, m)),
                    Err(load::LoadError::Failed(m) | load::LoadError::FailedAhead(m)) => {
                        Err(ErrorKind::Load.with(t, m))
                    }
                    Err(load::LoadError::Native) => Err(ErrorKind::Native.with(t, "")),
                    Ok(()) => match self.run_top_level(l, loaded, i, loader) {
                        Err(m) => {
                            lua::lua_settop(l, loader - 1);
                            Err(ErrorKind::Load.with(t, m))
                        }
                        Ok(new) => {
                            // keep the new value and the globals it assigned where the loader
                            // and its extra value were, then the running value
                            lua::lua_pushvalue(l, new.value);
                            lua::lua_replace(l, loader);
                            lua::lua_pushvalue(l, new.delta);
                            lua::lua_replace(l, loader + 1);
                            lua::lua_settop(l, loader + 1);
                            capi::push_bytes(l, &t.name);
                            lua::lua_rawget(l, loaded);
                            Ok(loader)
                        }
                    },
                }
            };
            // a table module that the new version cannot merge into fails before any hook
            // SAFETY: the three values are on the stack; held, then dropped either way.
            let result = result.and_then(|at| unsafe {
                let checked = plan::check_root(l, at + 2, at);
                let first_load = lua::lua_type(l, at + 2) == lua::LUA_TNIL;
                if checked.is_ok() {
                    for (k, idx) in [(NEW, at), (DELTA, at + 1), (LIVE, at + 2)] {
                        lua::lua_pushvalue(l, idx);
                        lua::lua_rawseti(l, self.held, held_key(i, k));
                    }
                }
                lua::lua_settop(l, at - 1);
                checked.map(|()| first_load).map_err(|m| ErrorKind::Merge.with(t, m))
            });
            match result {
                Ok(first_load) => {
                    if let Some(job) = self.jobs.get_mut(i) {
                        (job.loaded, job.first_load) = (true, first_load);
                    }
                }
                Err(e) => self.fail(i, e),
            }
        }
    }

    /// Runs the new top level of job `i` (its loader at `loader`), recording what it
    /// requires as its own. In a transaction it sees the new versions of the modules loaded
    /// before it in the batch (`package.loaded` holds them while it runs): a dependent
    /// reloaded after `conf` captures the new `conf`'s values.
    ///
    /// # Safety
    /// As `load::run`; `loaded` is `package.loaded`.
    unsafe fn run_top_level(
        &mut self,
        l: *mut lua_State,
        loaded: c_int,
        i: usize,
        loader: c_int,
    ) -> Result<load::Loaded, String> {
        let Some(t) = self.targets.get(i) else { return Err("no such job".into()) };
        // SAFETY: a walk of this thread's frames, one push at a time.
        let depth = unsafe { capture::loader_frames(l) };
        let mut outer = None;
        if let Ok(mut known) = self.cell.try_borrow_mut() {
            let required = known.graph.top_level_runs(&t.name);
            if let Some(job) = self.jobs.get_mut(i) {
                job.required = Some(required);
            }
            let name = t.name.as_slice().into();
            outer = known.reloading.replace(Reloading { name, thread: l as usize, depth });
        }
        let earlier: Vec<usize> = if self.mode == Mode::Atomic {
            (0..i)
                .filter(|&j| self.jobs.get(j).is_some_and(|job| job.loaded && job.error.is_none()))
                .collect()
        } else {
            Vec::new()
        };
        // SAFETY: raw writes of `package.loaded`, each undone below; the loader runs under
        // lua_pcall inside `load::run`.
        let result = unsafe {
            self.show_loaded(l, loaded, &earlier, NEW);
            let result = load::run(l, &t.name, loader);
            self.show_loaded(l, loaded, &earlier, LIVE);
            result
        };
        if let Ok(mut known) = self.cell.try_borrow_mut() {
            known.reloading = outer;
        }
        result
    }

    /// Sets `package.loaded[name]` of each job in `jobs` to its held value `which` (`NEW` or
    /// `LIVE`).
    ///
    /// # Safety
    /// `loaded` is `package.loaded`; two free stack slots.
    unsafe fn show_loaded(&self, l: *mut lua_State, loaded: c_int, jobs: &[usize], which: i64) {
        for &j in jobs {
            let Some(t) = self.targets.get(j) else { continue };
            // SAFETY: a raw read of the held table and a raw write of `package.loaded`.
            unsafe {
                capi::push_bytes(l, &t.name);
                lua::lua_rawgeti(l, self.held, held_key(j, which));
                lua::lua_rawset(l, loaded);
            }
        }
    }

    /// Step 3: a plan per loaded job.
    unsafe fn plan_all(&mut self, l: *mut lua_State, gc: &GcPause) {
        // SAFETY: inside the protected call, with the stack room `load_all` checked.
        let stop = unsafe { plan::stop_set(l) };
        let (held, globals) = (self.held, self.globals);
        for i in 0..self.jobs.len() {
            let Some(t) = self.targets.get(i) else { break };
            if !self.is_going(i) {
                continue;
            }
            // SAFETY: a non-raising check (a raise here could not be caught on LuaJIT).
            if unsafe { lua::lua_checkstack(l, plan::STACK_NEEDED + JOB_STACK) } == 0 {
                self.fail(i, stack_full(t, self.targets.len()));
                continue;
            }
            // SAFETY: the job's values are pushed, and dropped with what the plan left once
            // its anchors are held.
            let (top, v) = unsafe { (lua::lua_gettop(l), self.push_values(l, i)) };
            let Some(job) = self.jobs.get_mut(i) else { break };
            let empty = Snapshot::default();
            let base = job.base.as_ref().unwrap_or(&empty);
            // SAFETY: the job's values are on the stack.
            let planned = unsafe {
                let own = access::read(l, v.live).object().unwrap_or(0);
                let base_fns = if base::push_functions(l, &t.name) {
                    lua::lua_gettop(l)
                } else {
                    lua::lua_pop(l, 1);
                    0
                };
                let mut planner = Planner::new(l, base, base_fns, &stop, own, Some(gc));
                if self.opts.changes {
                    planner.record_changes();
                }
                match planner.root(l, v.live, v.new) {
                    Ok(()) => {
                        planner.globals(l, Some(globals), v.delta);
                        let mut plan = planner.finish(l);
                        plan.hold(l, held, held_key(i, ANCHORS));
                        Ok(plan)
                    }
                    Err(m) => Err(m),
                }
            };
            // SAFETY: back to where the step began.
            unsafe { lua::lua_settop(l, top) };
            match planned {
                Ok(p) => job.plan = Some(p),
                Err(m) => self.fail(i, ErrorKind::Merge.with(t, m)),
            }
        }
    }

    /// Step 2: the `before_reload` listeners, then each old module's `__unload`, before the
    /// plan: what a listener does to the new version is part of it, and what `__unload` does
    /// to the old module (a field it disposed of and cleared) is the old version's clean-up,
    /// not runtime state for the merge to keep.
    unsafe fn consent_all(&mut self, l: *mut lua_State) {
        for step in [Step::Listeners, Step::Unload] {
            for i in 0..self.jobs.len() {
                let (Some(t), Some(job)) = (self.targets.get(i), self.jobs.get(i)) else { break };
                if job.error.is_some() || (step == Step::Unload && job.first_load) {
                    continue;
                }
                // SAFETY: the job's values are pushed for the step and dropped after it; user
                // code is protected.
                let verdict = unsafe {
                    if lua::lua_checkstack(l, JOB_STACK) == 0 {
                        self.fail(i, stack_full(t, self.targets.len()));
                        continue;
                    }
                    let top = lua::lua_gettop(l);
                    let v = self.push_values(l, i);
                    let verdict = match step {
                        Step::Listeners => hooks::before_listeners(l, None, &t.name, v.live, v.new),
                        Step::Unload => hooks::call_module_hook(l, None, v.live, b"__unload"),
                    };
                    lua::lua_settop(l, top);
                    verdict
                };
                let who = match step {
                    Step::Listeners => "a before_reload listener",
                    Step::Unload => "its __unload hook",
                };
                match verdict {
                    Verdict::Go => {}
                    Verdict::Veto => {
                        self.fail(i, ErrorKind::Vetoed.with(t, format!("refused by {who}")))
                    }
                    Verdict::Failed(m) => {
                        self.fail(i, ErrorKind::Hook.with(t, format!("{who} raised: {m}")))
                    }
                }
            }
        }
    }

    /// Steps 4 and 5: apply each plan and set `package.loaded`, then call each merged
    /// module's `__reload`; a failing one is undone (in a transaction, all are).
    unsafe fn apply_all(&mut self, l: *mut lua_State, loaded: c_int, gc: &mut GcPause) {
        // Everything from here to the results (the walk, hooks, reports, the two result
        // lists) runs in this reserved space: nothing after the first write may fail for want
        // of it.
        let need = walk::STACK_NEEDED + 96 + CHECK_SLACK;
        // SAFETY: a non-raising check.
        if unsafe { lua::lua_checkstack(l, need) } == 0 {
            for i in 0..self.jobs.len() {
                if self.is_going(i)
                    && let Some(t) = self.targets.get(i)
                {
                    self.fail(i, stack_full(t, self.targets.len()));
                }
            }
            return;
        }
        // SAFETY: the job's values are pushed and dropped.
        let logged = self.jobs.len() > 1
            || (0..self.jobs.len()).any(|i| unsafe {
                if !self.is_going(i) {
                    return false;
                }
                let v = self.push_values(l, i);
                let has = hooks::has_field(l, v.live, b"__reload")
                    || hooks::has_field(l, v.new, b"__reload");
                lua::lua_pop(l, 3);
                has
            });
        for (t, job) in self.going() {
            let Some(plan) = job.plan.as_mut() else { continue };
            // SAFETY: the plan's anchors are placed on the stack for the step; the collector
            // is paused.
            unsafe {
                plan.place(l);
                job.undo = apply::apply(l, plan, logged);
                capi::push_bytes(l, &t.name);
                apply::push(l, plan, plan.root, true);
                lua::lua_rawset(l, loaded);
                plan.unplace();
                lua::lua_pop(l, 1);
            }
            // applied: from now on the new version is the base, whatever happens next
            job.mirror = Some(std::mem::take(&mut plan.mirror));
        }
        for i in 0..self.jobs.len() {
            let (Some(t), Some(job)) = (self.targets.get(i), self.jobs.get(i)) else { break };
            if job.error.is_some() || job.first_load {
                continue; // hooks are for reloads: a first load has nothing to dispose of
            }
            // SAFETY: as above; the hook runs protected.
            let verdict = unsafe {
                capi::push_bytes(l, &t.name);
                lua::lua_rawget(l, loaded);
                let v = hooks::call_module_hook(l, Some(gc), lua::lua_gettop(l), b"__reload");
                lua::lua_pop(l, 1);
                v
            };
            if let Verdict::Failed(m) = verdict {
                let e = ErrorKind::Hook
                    .with(t, format!("its __reload hook raised: {m} (the merge was rolled back)"));
                let was = self.failed();
                self.fail(i, e);
                // undo what this failure stopped, newest first
                let held = self.held;
                for (j, job) in self.jobs.iter_mut().enumerate().rev() {
                    if was.get(j) == Some(&false) && job.error.is_some() {
                        // SAFETY: as above.
                        unsafe { undo_job(l, self.targets.get(j), job, loaded, (held, j)) };
                    }
                }
            }
        }
    }

    /// The new version's functions become the base functions of each module merged.
    unsafe fn keep_functions(&mut self, l: *mut lua_State) {
        for (t, job) in self.going() {
            if let (Some(plan), Some(_)) = (&job.plan, &job.mirror) {
                // SAFETY: the plan's anchors are on the stack; inside the protected call.
                unsafe {
                    plan.push(l, plan.functions);
                    base::set_functions(l, &t.name, -1);
                    lua::lua_pop(l, 1);
                }
            }
        }
    }

    /// The report of each job that succeeded (`None` for the others), in order.
    fn reports(
        &self,
        plans: &[Plan],
        walked: Vec<walk::Outcome>,
        seconds: f64,
    ) -> Vec<Option<Report>> {
        let mut walked = walked.into_iter();
        let mut done = plans.iter();
        self.jobs
            .iter()
            .map(|job| {
                let plan = if job.error.is_none() { done.next() } else { None };
                plan.map(|plan| Report {
                    merge: plan.counts,
                    walk: walked.next().unwrap_or_default(),
                    seconds,
                    changed: plan.changed.clone(),
                })
            })
            .collect()
    }

    /// Step 7: the `on_reload` listeners of each module reloaded, and with `push` (for a
    /// batch that succeeded whole; a failed transaction answers with its message) the list
    /// of modules and the list of report tables on the stack. Returns how many values it
    /// pushed.
    ///
    /// # Safety
    /// The stack room `apply_all` reserved.
    unsafe fn report(
        &self,
        l: *mut lua_State,
        loaded: c_int,
        reports: &[Option<Report>],
        push: bool,
        listener_errors: &mut Vec<String>,
    ) -> c_int {
        // SAFETY: as documented; each target pushes its module and report and stores or pops
        // them.
        unsafe {
            let push = push && self.jobs.iter().all(|j| j.error.is_none());
            let tables = push || hooks::has_listeners(l, &AFTER);
            let lists = lua::lua_gettop(l) + 1;
            if push {
                let n = c_int::try_from(self.targets.len()).unwrap_or(0);
                lua::lua_createtable(l, n, 0);
                lua::lua_createtable(l, n, 0);
            }
            for (i, (t, report)) in self.targets.iter().zip(reports).enumerate() {
                let Some(r) = report else { continue };
                let (module, table) = (lua::lua_gettop(l) + 1, lua::lua_gettop(l) + 2);
                capi::push_bytes(l, &t.name);
                lua::lua_rawget(l, loaded);
                if tables {
                    hooks::push_report(l, r);
                } else {
                    lua::lua_pushnil(l);
                }
                let before = listener_errors.len();
                hooks::after_listeners(l, &t.name, module, table, listener_errors);
                if tables && let Some(errors) = listener_errors.get(before..) {
                    hooks::set_errors(l, table, errors);
                }
                if push {
                    let i = lua::lua_Integer::try_from(i + 1).unwrap_or(0);
                    lua::lua_rawseti(l, lists + 1, i);
                    lua::lua_rawseti(l, lists, i);
                } else {
                    lua::lua_pop(l, 2);
                }
            }
            if push { 2 } else { 0 }
        }
    }

    /// The plans of the jobs that succeeded, in order (for the walk).
    fn take_plans(&mut self) -> Vec<Plan> {
        self.going().filter_map(|(_, job)| job.plan.take()).collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Listeners,
    Unload,
}

/// Puts back what applying `job`'s plan overwrote, and its `package.loaded` entry (the
/// running value, job `i`'s in the table of held values at `held`).
unsafe fn undo_job(
    l: *mut lua_State,
    t: Option<&Target>,
    job: &mut Job,
    loaded: c_int,
    (held, i): (c_int, usize),
) {
    let (Some(t), Some(plan)) = (t, job.plan.as_mut()) else { return };
    let log = std::mem::take(&mut job.undo);
    job.mirror = None; // rolled back: the old base stands
    // SAFETY: the plan's anchors are placed for the step; the running value is held.
    unsafe {
        plan.place(l);
        apply::undo(l, plan, &log);
        plan.unplace();
        lua::lua_pop(l, 1);
        capi::push_bytes(l, &t.name);
        lua::lua_rawgeti(l, held, held_key(i, LIVE));
        lua::lua_rawset(l, loaded);
    }
}

impl ErrorKind {
    fn with(self, t: &Target, detail: impl Into<String>) -> Error {
        Error::new(self, &t.name, detail)
    }
}
