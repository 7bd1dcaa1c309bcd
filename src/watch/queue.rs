//! Changed files waiting for the next `poll()`: pushed by watcher threads, taken on the Lua
//! thread. Coalesced by path, so a burst of saves is one entry; a path is ready once no event
//! touched it for its settle time (zero where the OS reports close-after-write). Pure: the
//! clock is passed in, so the rules are tested without sleeping.

// Runs on notify's thread (or is called from it), where a panic would end the watcher
// silently: no unwrap, expect or panic outside the tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::compile;

/// The module search path a file is mapped to module names with: `None` for
/// `package.path`, or the one a watch was given (`watch(dir, {path = ...})`).
pub type Templates = Option<Arc<str>>;

#[derive(Debug)]
struct Entry {
    /// Time of the first event for this path since it was last taken.
    first: Instant,
    /// Time of the last event for this path.
    last: Instant,
    settle: Duration,
    /// Arrival order of the first event, so files are applied in the order they changed.
    seq: i64,
    /// The search paths of the watches that saw it (one, unless watches overlap).
    templates: Vec<Templates>,
    /// The latest compile request for it (`compile`): not ready before it is answered.
    compile: Option<u64>,
}

/// A changed file ready for `poll`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    pub path: PathBuf,
    pub templates: Vec<Templates>,
}

#[cfg(test)]
impl Ready {
    /// A file mapped through `package.path` only.
    pub fn plain(path: PathBuf) -> Ready {
        Ready { path, templates: vec![None] }
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<PathBuf, Entry>,
    seq: i64,
    /// Errors a watcher thread met (a watch limit reached in a new directory, ...), reported
    /// by the next poll.
    errors: Vec<String>,
}

/// The queue of one Lua state (shared by all its watchers).
#[derive(Debug, Default)]
pub struct Queue {
    /// Entries plus errors: lets an idle poll return without taking the lock.
    len: AtomicUsize,
    inner: Mutex<Inner>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters here; keep going rather than poison every later poll.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, inner: &Inner) {
        self.len.store(inner.entries.len() + inner.errors.len(), Ordering::Release);
    }

    /// Records an event for `path` at `now`, seen by a watch mapping files with `templates`.
    #[cfg(test)]
    pub fn push(&self, path: PathBuf, now: Instant, settle: Duration, templates: &Templates) {
        self.push_compiled(path, now, settle, templates, None);
    }

    /// Records an event for `path` at `now`, seen by a watch mapping files with `templates`,
    /// for which the compile worker was asked with request `compile`.
    pub fn push_compiled(
        &self,
        path: PathBuf,
        now: Instant,
        settle: Duration,
        templates: &Templates,
        compile: Option<u64>,
    ) {
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        let e = inner.entries.entry(path).or_insert(Entry {
            first: now,
            last: now,
            settle,
            seq,
            templates: Vec::with_capacity(1),
            compile: None,
        });
        e.last = now;
        e.settle = e.settle.max(settle);
        e.compile = e.compile.max(compile);
        if !e.templates.contains(templates) {
            e.templates.push(templates.clone());
        }
        self.publish(&inner);
    }

    /// Records an error to report at the next poll.
    pub fn push_error(&self, message: String) {
        let mut inner = self.lock();
        if !inner.errors.contains(&message) {
            inner.errors.push(message);
        }
        self.publish(&inner);
    }

    /// Number of paths (and errors) waiting, ready or not. Lock-free.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the paths that are ready at `now`, in the order they first changed, and the
    /// errors. Paths still settling stay, and so do those the compile worker has not
    /// answered yet (`compile::done`), for up to `compile::WAIT` after their first event: a
    /// file saved faster than the worker compiles it is not held back for longer.
    pub fn take_ready(&self, now: Instant) -> (Vec<Ready>, Vec<String>) {
        self.take_ready_answered(now, compile::done)
    }

    fn take_ready_answered(
        &self,
        now: Instant,
        answered: impl Fn(&std::path::Path, u64) -> bool,
    ) -> (Vec<Ready>, Vec<String>) {
        let mut inner = self.lock();
        let mut ready: Vec<(i64, Ready)> = Vec::new();
        inner.entries.retain(|path, e| {
            let quiet = now.saturating_duration_since(e.last);
            let waited = now.saturating_duration_since(e.first);
            let compiled =
                e.compile.is_none_or(|seq| waited >= compile::WAIT || answered(path, seq));
            if quiet >= e.settle && compiled {
                let templates = std::mem::take(&mut e.templates);
                ready.push((e.seq, Ready { path: path.clone(), templates }));
                false
            } else {
                true
            }
        });
        ready.sort_unstable_by_key(|(seq, _)| *seq);
        let errors = std::mem::take(&mut inner.errors);
        self.publish(&inner);
        (ready.into_iter().map(|(_, r)| r).collect(), errors)
    }

    /// Drops the waiting paths `keep` rejects (a closed watcher's).
    pub fn retain(&self, mut keep: impl FnMut(&std::path::Path) -> bool) {
        let mut inner = self.lock();
        inner.entries.retain(|path, _| keep(path));
        self.publish(&inner);
    }

    /// Gives back paths a time-limited poll did not get to; they come first next time.
    pub fn put_back(&self, files: Vec<Ready>, now: Instant) {
        let mut inner = self.lock();
        // Numbered below everything queued, in their order.
        let lowest = inner.entries.values().map(|e| e.seq).min().unwrap_or(0).min(0);
        let first = lowest - files.len() as i64;
        for (i, Ready { path, templates }) in files.into_iter().enumerate() {
            let seq = first + i as i64;
            let e = inner.entries.entry(path).or_insert(Entry {
                first: now,
                last: now,
                settle: Duration::ZERO,
                seq,
                templates: Vec::new(),
                compile: None,
            });
            for t in templates {
                if !e.templates.contains(&t) {
                    e.templates.push(t);
                }
            }
        }
        self.publish(&inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    /// The paths `take_ready` gives.
    fn paths(q: &Queue, now: Instant) -> Vec<PathBuf> {
        q.take_ready(now).0.into_iter().map(|r| r.path).collect()
    }

    #[test]
    fn a_burst_of_saves_is_one_entry() {
        let q = Queue::default();
        let t0 = Instant::now();
        for i in 0..20 {
            q.push(p("/s/a.lua"), t0 + Duration::from_millis(i), Duration::ZERO, &None);
        }
        assert_eq!(q.len(), 1);
        let (ready, errors) = q.take_ready(t0 + Duration::from_millis(20));
        assert_eq!(ready, vec![Ready::plain(p("/s/a.lua"))]);
        assert!(errors.is_empty());
        assert!(q.is_empty());
    }

    #[test]
    fn a_file_waits_for_its_compile_at_most_wait_after_its_first_save() {
        let q = Queue::default();
        let t0 = Instant::now();
        let never = |_: &std::path::Path, _: u64| false;
        let ms = Duration::from_millis;
        // saved every 100 ms, each save a new request the worker never gets to answer
        let mut seq = 0;
        let mut t = t0;
        while t < t0 + compile::WAIT {
            seq += 1;
            q.push_compiled(p("/big.lua"), t, Duration::ZERO, &None, Some(seq));
            assert!(q.take_ready_answered(t, never).0.is_empty(), "waits for the worker");
            t += ms(100);
        }
        q.push_compiled(p("/big.lua"), t, Duration::ZERO, &None, Some(seq + 1));
        let ready = q.take_ready_answered(t, never).0;
        assert_eq!(ready, vec![Ready::plain(p("/big.lua"))], "not held back by later saves");
        // answered: ready at once
        q.push_compiled(p("/big.lua"), t, Duration::ZERO, &None, Some(seq + 2));
        let answered = |_: &std::path::Path, s: u64| s <= seq + 2;
        assert_eq!(q.take_ready_answered(t, answered).0.len(), 1);
    }

    #[test]
    fn paths_come_out_in_the_order_they_first_changed() {
        let q = Queue::default();
        let t0 = Instant::now();
        q.push(p("/b.lua"), t0, Duration::ZERO, &None);
        q.push(p("/a.lua"), t0, Duration::ZERO, &None);
        q.push(p("/b.lua"), t0, Duration::ZERO, &None);
        assert_eq!(paths(&q, t0), vec![p("/b.lua"), p("/a.lua")]);
    }

    #[test]
    fn a_path_settles_after_its_last_event() {
        let q = Queue::default();
        let t0 = Instant::now();
        let settle = Duration::from_millis(50);
        q.push(p("/a.lua"), t0, settle, &None);
        q.push(p("/a.lua"), t0 + Duration::from_millis(40), settle, &None);
        assert!(paths(&q, t0 + Duration::from_millis(60)).is_empty(), "40+50 > 60");
        assert_eq!(q.len(), 1, "still waiting");
        assert_eq!(paths(&q, t0 + Duration::from_millis(90)), vec![p("/a.lua")]);
    }

    #[test]
    fn put_back_goes_first() {
        let q = Queue::default();
        let t0 = Instant::now();
        q.push(p("/new.lua"), t0, Duration::ZERO, &None);
        q.push(p("/newer.lua"), t0, Duration::ZERO, &None);
        q.put_back(vec![Ready::plain(p("/left1.lua")), Ready::plain(p("/left2.lua"))], t0);
        let order = vec![p("/left1.lua"), p("/left2.lua"), p("/new.lua"), p("/newer.lua")];
        assert_eq!(paths(&q, t0), order);
        q.push(p("/x.lua"), t0, Duration::ZERO, &None);
        q.put_back(vec![Ready::plain(p("/b.lua"))], t0);
        q.put_back(vec![Ready::plain(p("/a.lua"))], t0);
        assert_eq!(paths(&q, t0), vec![p("/a.lua"), p("/b.lua"), p("/x.lua")]);
    }

    #[test]
    fn retain_drops_what_a_closed_watcher_queued() {
        let q = Queue::default();
        let t0 = Instant::now();
        q.push(p("/closed/a.lua"), t0, Duration::ZERO, &None);
        q.push(p("/open/b.lua"), t0, Duration::ZERO, &None);
        q.retain(|path| !path.starts_with("/closed"));
        assert_eq!(q.len(), 1);
        assert_eq!(paths(&q, t0), vec![p("/open/b.lua")]);
    }

    #[test]
    fn a_file_two_watches_saw_keeps_both_search_paths() {
        let q = Queue::default();
        let t0 = Instant::now();
        let fennel: Templates = Some("./?.fnl".into());
        q.push(p("/a.fnl"), t0, Duration::ZERO, &fennel);
        q.push(p("/a.fnl"), t0, Duration::ZERO, &None);
        q.push(p("/a.fnl"), t0, Duration::ZERO, &fennel);
        let (ready, _) = q.take_ready(t0);
        assert_eq!(ready, vec![Ready { path: p("/a.fnl"), templates: vec![fennel, None] }]);
    }

    #[test]
    fn errors_are_reported_once() {
        let q = Queue::default();
        q.push_error("limit".into());
        q.push_error("limit".into());
        assert_eq!(q.len(), 1);
        let (ready, errors) = q.take_ready(Instant::now());
        assert!(ready.is_empty());
        assert_eq!(errors, vec!["limit".to_string()]);
        assert!(q.is_empty());
    }

    #[test]
    fn pushes_from_threads_are_all_seen() {
        let q = std::sync::Arc::new(Queue::default());
        let t0 = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        q.push(PathBuf::from(format!("/{t}/{i}.lua")), t0, Duration::ZERO, &None);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(paths(&q, t0).len(), 400);
    }
}
