//! Compiling saved files ahead, off the Lua thread: one worker per process, running while
//! at least one watch wants it (`compile_ahead`, on by default).
//!
//! - The event thread asks for a file once per event, however many watches see it
//!   (`Request`), and tags the queue entries with the request's number.
//! - The worker reads the file, compiles it in a private state of the host's library
//!   (`vm::scratch`) under the chunk name `require` used for it (`hint`), and keeps the
//!   dump (or the compiler's message) with the hash of the bytes it read. A queued file is
//!   not ready until the worker answered its latest request (`done`), or `WAIT` passed.
//! - `poll` takes the result (`lookup`) only if the file's bytes on disk hash the same, and
//!   the loader only if the standard file searcher would load that very file under that very
//!   name (`engine::load`); otherwise it compiles on the Lua thread as without this.
//! - The worker stops, and its results are dropped, when the last watch that wants it goes
//!   (`Ticket`): closing a state with a compile in flight waits for that compile, so no
//!   thread runs in the Lua library once the host might unload it.
//!
//! Locks: `WORKER` may be held while `RESULTS` is taken, and a queue's lock too (`done`),
//! never the other way round.

// Runs on notify's thread and on the worker, where a panic would end watching silently.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::process::{self, Owner};
use super::source::{self, content_hash};
use crate::vm::scratch::{self, Compiled};

/// How long a queued file waits for the worker before `poll` compiles it itself (the worker
/// is behind, say, a checkout of thousands of files).
pub const WAIT: Duration = Duration::from_secs(2);

/// Answers kept: the newest ones, for the states that have not polled yet.
const KEEP_ANSWERS: usize = 4096;
const KEEP_BYTES: usize = 64 << 20;
/// A bigger file is left to the Lua thread: its result would crowd out the others'.
const MAX_FILE: u64 = KEEP_BYTES as u64 / 4;

struct Job {
    path: PathBuf,
    seq: u64,
}

struct Worker {
    /// The process the thread runs in (`process`).
    owner: Owner,
    jobs: Sender<Job>,
    thread: JoinHandle<()>,
    /// Set to stop after the job in hand, leaving the rest.
    stop: Arc<AtomicBool>,
}

/// The worker and how many tickets hold it.
static WORKER: Mutex<(usize, Option<Worker>)> = Mutex::new((0, None));
static RUNNING: AtomicBool = AtomicBool::new(false);
static SEQ: AtomicU64 = AtomicU64::new(0);
/// Files the worker compiled, in the life of the process (`hotreload.stats`).
static COMPILED: AtomicU64 = AtomicU64::new(0);

/// How many files the worker compiled since the process started.
pub fn compiled() -> u64 {
    COMPILED.load(Ordering::Acquire)
}

#[derive(Default)]
struct Results {
    /// By watched path: the latest request answered, and its result (`None`: nothing to
    /// use, the Lua thread compiles it).
    by_path: HashMap<PathBuf, (u64, Option<Arc<Compiled>>)>,
    /// The answers in the order given, oldest first, as (path, request). One whose request
    /// is no longer its path's latest answer is stale, and skipped.
    order: VecDeque<(PathBuf, u64)>,
    /// The bytes the results hold.
    bytes: usize,
    /// The latest request among the answers forgotten: requests up to it count as answered
    /// (a file whose answer went is compiled on the Lua thread, not held back).
    forgotten: u64,
}

impl Results {
    /// Keeps `result` as the answer to request `seq` for `path`, unless a later request was
    /// answered already (by a worker started after this one was told to stop); then forgets
    /// the oldest answers past `KEEP_ANSWERS` or `KEEP_BYTES`.
    fn store(&mut self, path: PathBuf, seq: u64, result: Option<Arc<Compiled>>) {
        if self.by_path.get(&path).is_some_and(|(answered, _)| *answered > seq) {
            return;
        }
        self.bytes += size(&result);
        if let Some((_, old)) = self.by_path.insert(path.clone(), (seq, result)) {
            self.bytes -= size(&old).min(self.bytes);
        }
        self.order.push_back((path, seq));
        while self.by_path.len() > KEEP_ANSWERS
            || self.bytes > KEEP_BYTES
            || self.order.len() > 2 * KEEP_ANSWERS
        {
            let Some((path, seq)) = self.order.pop_front() else { break };
            if self.by_path.get(&path).is_some_and(|(answered, _)| *answered == seq) {
                if let Some((_, old)) = self.by_path.remove(&path) {
                    self.bytes -= size(&old).min(self.bytes);
                }
                self.forgotten = self.forgotten.max(seq);
            }
        }
    }

    /// Whether request `seq` for `path` was answered (or forgotten).
    fn answered(&self, path: &Path, seq: u64) -> bool {
        seq <= self.forgotten || self.by_path.get(path).is_some_and(|(a, _)| *a >= seq)
    }
}

static RESULTS: Mutex<Option<Results>> = Mutex::new(None);

/// The chunk name `require` gave each file (canonical) it loaded.
static HINTS: Mutex<Option<HashMap<PathBuf, Box<[u8]>>>> = Mutex::new(None);

/// Holds the worker's locks across a `fork` (`process::guard_forks`), in their order.
pub fn hold_for_fork(held: &mut Vec<Box<dyn std::any::Any>>) {
    held.push(Box::new(lock(&WORKER)));
    held.push(Box::new(lock(&RESULTS)));
    held.push(Box::new(lock(&HINTS)));
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // nothing here is left half-updated by a panic that matters more than going on
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps the worker running while it lives; the last one dropped stops it.
#[derive(Debug)]
pub struct Ticket(());

impl Ticket {
    pub fn take() -> Ticket {
        let mut w = lock(&WORKER);
        w.0 += 1;
        if let Some(inherited) = w.1.take_if(|w| !w.owner.is_here()) {
            // forked: the parent's thread is not here to stop or join
            std::mem::forget(inherited);
            *lock(&RESULTS) = None;
        }
        if w.1.is_none() {
            process::guard_forks();
            let (jobs, rx) = mpsc::channel();
            let stop = Arc::new(AtomicBool::new(false));
            let stopped = stop.clone();
            let spawned = std::thread::Builder::new()
                .name("hotreload-compile".into())
                .spawn(move || work(&rx, &stopped));
            if let Ok(thread) = spawned {
                w.1 = Some(Worker { owner: Owner::here(), jobs, thread, stop });
                RUNNING.store(true, Ordering::Release);
            }
        }
        Ticket(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut stopped = {
            let mut w = lock(&WORKER);
            w.0 = w.0.saturating_sub(1);
            if w.0 == 0 {
                RUNNING.store(false, Ordering::Release);
                w.1.take()
            } else {
                None
            }
        };
        if let Some(worker) = stopped.take_if(|w| !w.owner.is_here()) {
            // forked: the parent's thread is not here to stop or join
            std::mem::forget(worker);
        }
        if let Some(Worker { jobs, thread, stop, .. }) = stopped {
            stop.store(true, Ordering::Release);
            drop(jobs); // the worker ends after the job in hand
            let _ = thread.join();
            // unless a watch started another worker meanwhile, whose results these are now
            let w = lock(&WORKER);
            if w.1.is_none() {
                *lock(&RESULTS) = None;
            }
        }
    }
}

/// One changed file's compile request, made at most once however many watches see it.
pub struct Request<'a> {
    path: &'a Path,
    seq: Option<Option<u64>>,
}

impl<'a> Request<'a> {
    pub fn new(path: &'a Path) -> Request<'a> {
        Request { path, seq: None }
    }

    /// The request's number, asking the worker the first time; `None` if it is not running.
    pub fn seq(&mut self) -> Option<u64> {
        *self.seq.get_or_insert_with(|| {
            let w = lock(&WORKER);
            let worker = w.1.as_ref().filter(|w| w.owner.is_here())?;
            let seq = SEQ.fetch_add(1, Ordering::Relaxed) + 1;
            worker.jobs.send(Job { path: self.path.to_owned(), seq }).ok()?;
            Some(seq)
        })
    }
}

/// Whether the worker answered request `seq` for `path` (or is not running to answer it).
pub fn done(path: &Path, seq: u64) -> bool {
    if !RUNNING.load(Ordering::Acquire) {
        return true;
    }
    lock(&RESULTS).as_ref().is_some_and(|r| r.answered(path, seq))
}

/// The latest result for `path`, if there is one to use.
pub fn lookup(path: &Path) -> Option<Arc<Compiled>> {
    lock(&RESULTS).as_ref()?.by_path.get(path)?.1.clone()
}

/// Records that `require` loaded `file` (canonical) under `chunkname`: the name its next
/// compile uses.
pub fn hint(file: PathBuf, chunkname: &[u8]) {
    let mut hints = lock(&HINTS);
    let hints = hints.get_or_insert_with(HashMap::new);
    if hints.get(&file).is_none_or(|c| **c != *chunkname) {
        hints.insert(file, chunkname.into());
    }
}

/// The worker: answers the requests, the latest of each path once, until `stop`.
fn work(rx: &Receiver<Job>, stop: &AtomicBool) {
    while let Ok(first) = rx.recv() {
        // the latest request of each path
        let mut latest: Vec<Job> = vec![first];
        let mut at: HashMap<PathBuf, usize> = HashMap::new();
        at.insert(latest[0].path.clone(), 0);
        for job in rx.try_iter() {
            if stop.load(Ordering::Acquire) {
                return;
            }
            match at.get(&job.path) {
                Some(&i) => latest[i].seq = latest[i].seq.max(job.seq),
                None => {
                    at.insert(job.path.clone(), latest.len());
                    latest.push(job);
                }
            }
        }
        drop(at);
        // by request, so that the answers are stored in the order of their requests and
        // forgetting the oldest forgets only requests below every one still waiting
        latest.sort_unstable_by_key(|j| j.seq);
        for job in latest {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let result = compile_file(&job.path).map(Arc::new);
            store(job, result);
            COMPILED.fetch_add(1, Ordering::Release);
        }
    }
}

/// Reads and compiles the file at `path`; `None` if the Lua thread is to do it.
fn compile_file(path: &Path) -> Option<Compiled> {
    let bytes = source::read(path, MAX_FILE)?;
    let hash = content_hash(&bytes);
    let text = scratch::file_text(&bytes)?;
    let file = std::fs::canonicalize(path).ok()?;
    let hinted = lock(&HINTS).as_ref().and_then(|h| h.get(&file).cloned());
    let chunkname = hinted.unwrap_or_else(|| {
        let mut name = b"@".to_vec();
        name.extend_from_slice(path.as_os_str().as_encoded_bytes());
        name.into()
    });
    let chunk = scratch::compile(&text, &chunkname)?;
    Some(Compiled { file, chunkname, hash, chunk })
}

fn size(c: &Option<Arc<Compiled>>) -> usize {
    c.as_ref().map_or(0, |c| c.chunk.as_ref().map_or_else(String::len, Vec::len))
}

fn store(job: Job, result: Option<Arc<Compiled>>) {
    lock(&RESULTS).get_or_insert_with(Results::default).store(job.path, job.seq, result);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(path: &Path, bytes: usize) -> Option<Arc<Compiled>> {
        Some(Arc::new(Compiled {
            file: path.to_owned(),
            chunkname: b"@x".as_slice().into(),
            hash: 0,
            chunk: Ok(vec![0; bytes]),
        }))
    }

    #[test]
    fn answers_are_bounded_and_forgotten_ones_count_as_answered() {
        let mut r = Results::default();
        let n = 3 * KEEP_ANSWERS as u64;
        for seq in 1..=n {
            let path = PathBuf::from(format!("/t/{seq}.lua"));
            let result = if seq % 2 == 0 { chunk(&path, 10) } else { None };
            r.store(path, seq, result);
        }
        assert_eq!(r.by_path.len(), KEEP_ANSWERS);
        assert!(r.order.len() <= 2 * KEEP_ANSWERS);
        assert!(r.answered(Path::new("/t/1.lua"), 1), "forgotten, so not waited for");
        assert!(r.answered(Path::new(&format!("/t/{n}.lua")), n));
        assert!(r.by_path[Path::new(&format!("/t/{n}.lua"))].1.is_some(), "the newest kept");
        assert!(!r.answered(Path::new("/t/new.lua"), n + 1));
        assert_eq!(r.bytes, KEEP_ANSWERS / 2 * 10);
    }

    #[test]
    fn a_file_saved_over_and_over_keeps_one_answer_and_its_latest_result() {
        let mut r = Results::default();
        let path = PathBuf::from("/t/busy.lua");
        for seq in 1..=(5 * KEEP_ANSWERS as u64) {
            // a source save, then a bytecode save (nothing to use), in turn
            let result = if seq % 2 == 1 { chunk(&path, 100) } else { None };
            r.store(path.clone(), seq, result);
            r.store(PathBuf::from(format!("/t/other{}.lua", seq % 8)), seq, None);
        }
        r.store(path.clone(), u64::MAX - 1, chunk(&path, 100));
        assert_eq!(r.by_path.len(), 9);
        assert!(r.order.len() <= 2 * KEEP_ANSWERS);
        assert!(r.by_path[&path].1.is_some(), "a stale entry in the order did not evict it");
        assert_eq!(r.bytes, 100);
    }

    #[test]
    fn a_late_answer_to_an_older_request_is_dropped() {
        let mut r = Results::default();
        let path = PathBuf::from("/t/a.lua");
        r.store(path.clone(), 5, chunk(&path, 7));
        r.store(path.clone(), 3, None);
        assert_eq!(r.by_path[&path].0, 5);
        assert!(r.by_path[&path].1.is_some());
        assert_eq!(r.bytes, 7);
    }

    #[test]
    fn results_past_the_byte_cap_are_forgotten_oldest_first() {
        let mut r = Results::default();
        let big = KEEP_BYTES / 4 + 1;
        for seq in 1..=4 {
            let path = PathBuf::from(format!("/t/{seq}.lua"));
            r.store(path.clone(), seq, chunk(&path, big));
        }
        assert!(r.bytes <= KEEP_BYTES);
        assert!(!r.by_path.contains_key(Path::new("/t/1.lua")));
        assert!(r.answered(Path::new("/t/1.lua"), 1));
        assert!(r.by_path.contains_key(Path::new("/t/4.lua")));
    }
}
