//! `watch(dir, {poll_ms = N})`: for file systems that report no events (network mounts, some
//! container bind mounts, Windows drives seen from WSL). A thread of its own lists the tree
//! every N ms the way `tree` walks it (ignored directories and links left out, wanted files
//! only) and compares each wanted file's size and modification time with the last listing's.
//! Where the time cannot tell two saves apart (a whole-second time, or a recent one), it
//! compares a hash of the bytes too. A changed or new file goes into the state's queue like an
//! event would; nothing else in the tree is read.

// Runs on the polling thread, where a panic would end the watcher silently.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::compile::Request;
use super::hub::Sub;
use super::process;
use super::source;
use super::tree::{self, list_dir};
use super::watcher::{WatchError, pin_library};

/// How recent a modification time must be for a save within the same tick of the file
/// system's clock to be possible (FAT's clock ticks every 2 s).
const COARSE: Duration = Duration::from_secs(2);

/// Held (read) by a polling thread while it pushes into a queue, and (write) across a `fork`
/// (`process::guard_forks`): no queue lock is then held by a polling thread.
static PUSHING: RwLock<()> = RwLock::new(());

/// Holds the polling threads' pushes across a `fork`.
pub fn hold_for_fork(held: &mut Vec<Box<dyn std::any::Any>>) {
    held.push(Box::new(PUSHING.write().unwrap_or_else(PoisonError::into_inner)));
}

/// A polled tree; its thread ends when it is stopped.
pub struct Polled {
    pub every: Duration,
    /// Closed by `stop`: the thread may be in the middle of a listing, and what it finds then
    /// must not reach the queue.
    gate: Arc<RwLock<bool>>,
    /// Dropped by `stop`, which wakes the thread to end.
    wake: Mutex<Option<Sender<()>>>,
}

impl Polled {
    /// Starts polling `root` (canonical) every `every` for `sub`. The first listing is taken
    /// before this returns: a save after it is a change.
    pub fn start(root: &Path, sub: Sub, every: Duration) -> Result<Polled, WatchError> {
        let first = tree::walk(root, &sub.filter, &list_dir);
        if let Some((_, e)) = first.skipped.iter().find(|(d, _)| d == root) {
            return Err(WatchError::Os(format!("cannot watch '{}': {e}", root.display())));
        }
        let mut reported = tree::skipped_message(root, &first.skipped);
        if let Some(message) = &reported {
            sub.queue.push_error(message.clone());
        }
        let mut seen = Seen::default();
        seen.update(first.files, SystemTime::now(), &stat, &source::hash_file);
        let gate = Arc::new(RwLock::new(true));
        let open = gate.clone();
        let (wake, sleep) = mpsc::channel::<()>();
        let root_path = root.to_owned();
        process::guard_forks();
        let thread = move || {
            while let Err(RecvTimeoutError::Timeout) = sleep.recv_timeout(every) {
                let walked = tree::walk(&root_path, &sub.filter, &list_dir);
                // the root gone, or directories that cannot be read: said once, until it changes
                let report = if walked.skipped.iter().any(|(d, _)| *d == root_path) {
                    Some(tree::lost_message(&root_path))
                } else {
                    tree::skipped_message(&root_path, &walked.skipped)
                };
                let changed =
                    seen.update(walked.files, SystemTime::now(), &stat, &source::hash_file);
                let _pushing = PUSHING.read().unwrap_or_else(PoisonError::into_inner);
                let open = open.read().unwrap_or_else(PoisonError::into_inner);
                if !*open {
                    return;
                }
                if report != reported {
                    if let Some(message) = &report {
                        sub.queue.push_error(message.clone());
                    }
                    reported = report;
                }
                let now = Instant::now();
                for path in changed {
                    sub.push(&path, now, Duration::ZERO, &mut Request::new(&path));
                }
            }
        };
        std::thread::Builder::new()
            .name("hotreload-poll".into())
            .spawn(thread)
            .map_err(|e| WatchError::Os(format!("cannot watch '{}': {e}", root.display())))?;
        pin_library();
        Ok(Polled { every, gate, wake: Mutex::new(Some(wake)) })
    }

    /// Once this returns, nothing more reaches the queue; the thread ends at once, or after
    /// the listing in hand.
    pub fn stop(&self) {
        *self.gate.write().unwrap_or_else(PoisonError::into_inner) = false;
        drop(self.wake.lock().unwrap_or_else(PoisonError::into_inner).take());
    }
}

impl Drop for Polled {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A file's size and modification time (`None`: not a regular file now).
type Stat<'a> = dyn Fn(&Path) -> Option<(u64, Option<SystemTime>)> + 'a;

fn stat(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file().then(|| (meta.len(), meta.modified().ok()))
}

/// What a listing found of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// Read only where the time is coarse.
    hash: Option<u64>,
}

/// The wanted files of the last listing.
#[derive(Debug, Default)]
struct Seen {
    files: HashMap<PathBuf, Stamp>,
    /// Whether a listing was taken: from the next one on, a new file is a change.
    primed: bool,
}

impl Seen {
    /// Takes a new listing at `now`; returns the files that changed or appeared since the
    /// last one (none on the first).
    fn update(
        &mut self,
        listed: Vec<PathBuf>,
        now: SystemTime,
        stat: &Stat<'_>,
        hash: &dyn Fn(&Path) -> Option<u64>,
    ) -> Vec<PathBuf> {
        let mut next = HashMap::with_capacity(listed.len());
        let mut changed = Vec::new();
        for path in listed {
            let Some((len, modified)) = stat(&path) else { continue };
            let coarse = modified.is_none_or(|m| {
                let whole = m.duration_since(UNIX_EPOCH).map_or(true, |d| d.subsec_nanos() == 0);
                whole || now.duration_since(m).map_or(true, |age| age < COARSE)
            });
            let old = self.files.get(&path);
            // read while the time is coarse, and once more after: a second save in the same
            // tick, listed only after the tick passed, shows then
            let read = coarse || old.is_some_and(|o| o.hash.is_some());
            let hash = if read { hash(&path) } else { None };
            let same = old.is_some_and(|o| {
                o.len == len
                    && o.modified == modified
                    && (o.hash.is_none() || hash.is_none() || o.hash == hash)
            });
            if !same && (old.is_some() || self.primed) {
                changed.push(path.clone());
            }
            let hash = if coarse { hash } else { None };
            next.insert(path, Stamp { len, modified, hash });
        }
        self.files = next;
        self.primed = true;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// A made-up file system: path -> (len, modified, hash), and how many hashes were read.
    struct Fake {
        files: RefCell<HashMap<PathBuf, (u64, SystemTime, u64)>>,
        hashed: Cell<usize>,
    }

    impl Fake {
        fn new() -> Fake {
            Fake { files: RefCell::new(HashMap::new()), hashed: Cell::new(0) }
        }
        fn set(&self, path: &str, len: u64, modified: SystemTime, hash: u64) {
            self.files.borrow_mut().insert(PathBuf::from(path), (len, modified, hash));
        }
        fn list(&self) -> Vec<PathBuf> {
            let mut paths: Vec<PathBuf> = self.files.borrow().keys().cloned().collect();
            paths.sort();
            paths
        }
        fn update(&self, seen: &mut Seen, now: SystemTime) -> Vec<PathBuf> {
            let stat = |p: &Path| self.files.borrow().get(p).map(|&(len, m, _)| (len, Some(m)));
            let hash = |p: &Path| {
                self.hashed.set(self.hashed.get() + 1);
                self.files.borrow().get(p).map(|&(_, _, h)| h)
            };
            seen.update(self.list(), now, &stat, &hash)
        }
    }

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn the_first_listing_is_the_baseline_and_later_ones_report_changes() {
        let fs = Fake::new();
        let mut seen = Seen::default();
        fs.set("/t/a.lua", 10, at(1000, 5), 1);
        fs.set("/t/b.lua", 10, at(1000, 5), 2);
        assert!(fs.update(&mut seen, at(2000, 0)).is_empty(), "the baseline");
        assert!(fs.update(&mut seen, at(2001, 0)).is_empty(), "nothing changed");
        fs.set("/t/a.lua", 11, at(1000, 5), 1);
        fs.set("/t/b.lua", 10, at(1500, 5), 2);
        fs.set("/t/new.lua", 1, at(1000, 5), 3);
        let changed = fs.update(&mut seen, at(2002, 0));
        assert_eq!(changed, ["/t/a.lua", "/t/b.lua", "/t/new.lua"].map(PathBuf::from));
        fs.files.borrow_mut().remove(Path::new("/t/new.lua"));
        assert!(fs.update(&mut seen, at(2003, 0)).is_empty(), "a removal is no change");
        fs.set("/t/new.lua", 1, at(1000, 5), 3);
        assert_eq!(fs.update(&mut seen, at(2004, 0)), [PathBuf::from("/t/new.lua")]);
    }

    #[test]
    fn only_files_whose_time_is_coarse_are_read_and_compared() {
        let fs = Fake::new();
        let mut seen = Seen::default();
        fs.set("/t/old.lua", 10, at(1000, 5), 1); // fine-grained and old: never read
        fs.set("/t/recent.lua", 10, at(1999, 5), 1); // within COARSE of now
        fs.set("/t/whole.lua", 10, at(1000, 0), 1); // a file system of whole seconds
        assert!(fs.update(&mut seen, at(2000, 0)).is_empty());
        assert_eq!(fs.hashed.get(), 2);
        // the same size and time, other bytes: a second save within the clock's tick
        fs.set("/t/old.lua", 10, at(1000, 5), 9);
        fs.set("/t/recent.lua", 10, at(1999, 5), 9);
        fs.set("/t/whole.lua", 10, at(1000, 0), 9);
        let changed = fs.update(&mut seen, at(2000, 1));
        assert_eq!(changed, ["/t/recent.lua", "/t/whole.lua"].map(PathBuf::from));
        assert_eq!(fs.hashed.get(), 4);
        // once the time is old enough, the file is read once more, then no longer
        assert!(fs.update(&mut seen, at(2010, 0)).is_empty());
        assert_eq!(fs.hashed.get(), 6, "the recent file once more, the whole-second one");
        assert!(fs.update(&mut seen, at(2011, 0)).is_empty());
        assert_eq!(fs.hashed.get(), 7, "only the whole-second file");
    }

    #[test]
    fn a_second_save_in_the_same_tick_shows_even_if_listed_after_the_tick() {
        let fs = Fake::new();
        let mut seen = Seen::default();
        fs.set("/t/a.lua", 10, at(1000, 5), 1);
        assert!(fs.update(&mut seen, at(1000, 6)).is_empty(), "the baseline, while recent");
        fs.set("/t/a.lua", 10, at(1000, 5), 2); // same size and time: the same tick
        assert_eq!(fs.update(&mut seen, at(1005, 0)), [PathBuf::from("/t/a.lua")]);
    }
}
