//! The one OS watcher of the process, shared by every Lua state and every watched root.
//!
//! - **One OS instance, two threads.** The first `watch` of the process starts notify's
//!   watcher (its event thread) and one worker thread of ours; both live until the process
//!   ends (the library is pinned, see `watcher::pin_library`). However many states watch
//!   however many roots, no other thread or OS instance is taken (the polling watcher of
//!   `poll_ms` and the compile worker aside, see `polling` and `compile`).
//! - **Directories are watched one by one and counted.** Each directory is watched
//!   (non-recursively) once, and records the roots that cover it; it is unwatched when the
//!   last of them goes. Overlapping roots therefore share the directories they have in
//!   common, and a save is one event, queued once per state.
//! - **Roots are shared.** Every state that watches the same directory with the same ignore
//!   list subscribes to the same root: 10,000 states watching one tree walk it once.
//! - **The event thread never touches Lua, and never calls notify.** It classifies events
//!   and pushes changed files into the subscribers' queues; a directory that appeared or
//!   went, and the OS dropping events, are handed to the worker, which (un)watches
//!   directories and lists new ones. A root that is removed or renamed is reported once to
//!   its subscribers and watched again once it exists again.
//!
//! Locks: `tree` (the directories and the OS watcher) is taken before `routes` (the roots
//! and their subscribers), never the other way; the event thread only reads `routes`, and
//! no notify call is made while `routes` is written, so notify's event thread, which runs
//! our handler, is never waited on while it waits on us.

// Runs on notify's thread and on the worker, where a panic would end watching silently.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use notify::event::{ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher, WatcherKind};

use super::compile::Request;
use super::filter::Filter;
use super::process::{self, Owner};
use super::queue::{Queue, Templates};
use super::tree::{self, list_dir};
use super::watcher::{Action, WatchError, classify, describe, pin_library};

/// How long files found by listing a directory (rather than by an event) wait before they
/// are ready: one still being written then gets its close event, which merges with it.
pub const RESCAN_DELAY: Duration = Duration::from_millis(50);

/// How often the worker looks for a lost root to come back.
const LOST_CHECK: Duration = Duration::from_millis(200);

/// One watch of one state: where its changed files go, and which count.
#[derive(Debug)]
pub struct Sub {
    pub queue: Arc<Queue>,
    pub filter: Filter,
    pub settle: Duration,
    pub templates: Templates,
    /// Whether its files are compiled ahead (`compile_ahead`).
    pub compile: bool,
}

impl Sub {
    /// Queues `path` if its name counts, waiting at least `at_least` (and for the compile
    /// worker to answer `request`, if this watch compiles ahead).
    pub fn push(&self, path: &Path, now: Instant, at_least: Duration, request: &mut Request) {
        if self.filter.wants_file(path) {
            let seq = if self.compile { request.seq() } else { None };
            let settle = self.settle.max(at_least);
            self.queue.push_compiled(path.to_owned(), now, settle, &self.templates, seq);
        }
    }
}

/// A watched root and the watches subscribed to it.
struct Root {
    id: u64,
    path: PathBuf,
    /// Which directories the root covers (the ignore globs; its pattern is unused).
    dirs: Filter,
    subs: Vec<(u64, Arc<Sub>)>,
    /// Set while the root directory is gone (removed or renamed), until it exists again.
    lost: Arc<AtomicBool>,
}

impl Root {
    fn covers(&self, path: &Path) -> bool {
        !self.lost.load(Ordering::Relaxed)
            && path.starts_with(&self.path)
            && !self.dirs.ignores_under(&self.path, path)
    }

    fn report(&self, message: &str) {
        for (_, sub) in &self.subs {
            sub.queue.push_error(message.to_owned());
        }
    }
}

#[derive(Default)]
struct Routes {
    roots: Vec<Root>,
}

/// Work for the worker thread, sent by the event thread.
#[derive(Debug)]
enum Work {
    /// A directory appeared (created, or moved into a watched one).
    NewDir(PathBuf),
    /// Something was removed or moved away (maybe a watched directory, maybe a root).
    Gone(PathBuf),
    /// The OS dropped events: list every root again.
    Rescan,
}

/// The OS side: notify's watcher, and the watched directories with the roots covering each.
struct Tree {
    /// The process whose threads serve `watcher` (`process`).
    owner: Owner,
    watcher: RecommendedWatcher,
    /// In path order, so that what is under a directory comes right after it.
    dirs: BTreeMap<PathBuf, Vec<u64>>,
    next_id: u64,
}

struct Hub {
    routes: Arc<RwLock<Routes>>,
    tree: Mutex<Option<Tree>>,
    /// Whether notify reports close-after-write (inotify), so that a file is complete when
    /// its event arrives.
    close_events: bool,
}

static HUB: OnceLock<Hub> = OnceLock::new();

/// Holds the hub's locks across a `fork` (`process::guard_forks`): the directories, then
/// the roots, in their order.
pub fn hold_for_fork(held: &mut Vec<Box<dyn std::any::Any>>) {
    if let Some(hub) = HUB.get() {
        held.push(Box::new(lock(&hub.tree)));
        held.push(Box::new(write(&hub.routes)));
    }
}

fn hub() -> &'static Hub {
    HUB.get_or_init(|| Hub {
        routes: Arc::default(),
        tree: Mutex::new(None),
        close_events: RecommendedWatcher::kind() == WatcherKind::Inotify,
    })
}

/// Whether this process's OS watcher reports close-after-write.
pub fn close_events() -> bool {
    hub().close_events
}

fn read(routes: &RwLock<Routes>) -> std::sync::RwLockReadGuard<'_, Routes> {
    routes.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(routes: &RwLock<Routes>) -> std::sync::RwLockWriteGuard<'_, Routes> {
    routes.write().unwrap_or_else(PoisonError::into_inner)
}

/// A watch's place in the hub; [`unsubscribe`] gives it back.
#[derive(Debug)]
pub struct Subscription {
    root: u64,
    sub: u64,
    lost: Arc<AtomicBool>,
}

impl Subscription {
    /// Whether the root directory is gone (removed or renamed) and not back yet.
    pub fn lost(&self) -> bool {
        // pairs with the worker's Release: its report is in the queue before this says so
        self.lost.load(Ordering::Acquire)
    }
}

/// Subscribes `sub` to the root `root` (canonical): shares the root with the watches that
/// already have it with the same ignore list, else walks it and watches its directories.
/// Directories that cannot be read are skipped, and reported once through `sub`'s queue.
pub fn subscribe(root: &Path, sub: Sub) -> Result<Subscription, WatchError> {
    let hub = hub();
    let mut guard = lock(&hub.tree);
    let mut next_id = 0;
    if let Some(inherited) = guard.take_if(|tree| !tree.owner.is_here()) {
        // forked: the parent's watches stay where they are, deaf here; their OS watcher is
        // left alone (dropping it would talk to a thread this process does not have)
        next_id = inherited.next_id;
        std::mem::forget(inherited);
        write(&hub.routes).roots.clear();
    }
    let tree = match &mut *guard {
        Some(tree) => tree,
        empty => {
            let mut tree = start(hub).map_err(|e| describe(&e, root))?;
            tree.next_id = next_id; // the inherited subscriptions keep their ids
            empty.insert(tree)
        }
    };
    let sub = Arc::new(sub);
    tree.next_id += 1;
    let sub_id = tree.next_id;
    {
        let mut routes = write(&hub.routes);
        let shared = routes.roots.iter_mut().find(|r| {
            r.path == root && r.dirs.ignore == sub.filter.ignore && !r.lost.load(Ordering::Relaxed)
        });
        if let Some(r) = shared {
            r.subs.push((sub_id, sub));
            return Ok(Subscription { root: r.id, sub: sub_id, lost: r.lost.clone() });
        }
    }
    tree.next_id += 1;
    let id = tree.next_id;
    // watched, then listed again until no directory appeared in between
    let (walked, failed) = tree.watch_tree(root, &sub.filter, id);
    if let Some((_, e)) = walked.skipped.iter().find(|(d, _)| d == root) {
        tree.untrack_root(id);
        return Err(WatchError::Os(format!("cannot watch '{}': {e}", root.display())));
    }
    let unwatchable = |(d, e): &(PathBuf, notify::Error)| {
        d == root || matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
    };
    if let Some((_, e)) = failed.iter().find(|f| unwatchable(f)) {
        tree.untrack_root(id);
        return Err(describe(e, root));
    }
    let mut skipped = walked.skipped;
    skipped.extend(failed.into_iter().map(|(d, e)| (d, std::io::Error::other(e.to_string()))));
    if let Some(message) = tree::skipped_message(root, &skipped) {
        sub.queue.push_error(message);
    }
    let lost = Arc::new(AtomicBool::new(false));
    write(&hub.routes).roots.push(Root {
        id,
        path: root.to_owned(),
        dirs: sub.filter.clone(),
        subs: vec![(sub_id, sub)],
        lost: lost.clone(),
    });
    Ok(Subscription { root: id, sub: sub_id, lost })
}

/// Ends a subscription: once this returns, nothing more reaches its queue. The root's
/// directories no other root covers are unwatched (the OS watcher itself stays).
pub fn unsubscribe(s: &Subscription) {
    let hub = hub();
    let mut guard = lock(&hub.tree);
    let emptied = {
        let mut routes = write(&hub.routes);
        let Some(i) = routes.roots.iter().position(|r| r.id == s.root) else { return };
        let root = &mut routes.roots[i];
        root.subs.retain(|(id, _)| *id != s.sub);
        root.subs.is_empty().then(|| routes.roots.swap_remove(i))
    };
    if let (Some(root), Some(tree)) = (emptied, &mut *guard)
        && tree.owner.is_here()
    {
        tree.untrack_root(root.id);
    }
}

fn lock(tree: &Mutex<Option<Tree>>) -> MutexGuard<'_, Option<Tree>> {
    tree.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts the OS watcher and the worker.
fn start(hub: &'static Hub) -> notify::Result<Tree> {
    process::guard_forks();
    let (tx, rx) = mpsc::channel::<Work>();
    let routes = hub.routes.clone();
    let close_events = hub.close_events;
    let watcher = notify::recommended_watcher(move |res| handle(&routes, &tx, close_events, res))?;
    std::thread::Builder::new()
        .name("hotreload-watch".into())
        .spawn(move || work(hub, &rx))
        .map_err(notify::Error::io)?;
    pin_library();
    Ok(Tree { owner: Owner::here(), watcher, dirs: BTreeMap::new(), next_id: 0 })
}

/// notify's event handler, on its thread.
fn handle(
    routes: &RwLock<Routes>,
    work: &Sender<Work>,
    close_events: bool,
    res: notify::Result<Event>,
) {
    let event = match res {
        Ok(event) => event,
        Err(e) => {
            let message = format!("hotreload: watch: {e}");
            for root in &read(routes).roots {
                root.report(&message);
            }
            return;
        }
    };
    if event.need_rescan() {
        let _ = work.send(Work::Rescan);
        return;
    }
    if let EventKind::Remove(RemoveKind::Folder | RemoveKind::Other | RemoveKind::Any)
    | EventKind::Modify(ModifyKind::Name(RenameMode::From | RenameMode::Any)) = event.kind
    {
        for path in &event.paths {
            let _ = work.send(Work::Gone(path.clone()));
        }
    }
    match classify(&event.kind, close_events) {
        Action::Changed => {
            let now = Instant::now();
            for path in &event.paths {
                if tree::is_dir_itself(path) {
                    let _ = work.send(Work::NewDir(path.clone())); // renamed into the tree
                } else {
                    dispatch(&read(routes), path, now, Duration::ZERO);
                }
            }
        }
        Action::Scan => {
            for path in &event.paths {
                let _ = work.send(Work::NewDir(path.clone()));
            }
        }
        Action::Ignore => {}
    }
}

/// `dir` and the watched directories under it: in path order they come right after it (a
/// look per directory, not a pass over them all, when a large tree is removed).
fn under(dirs: &BTreeMap<PathBuf, Vec<u64>>, dir: &Path) -> Vec<PathBuf> {
    dirs.range::<Path, _>((Bound::Included(dir), Bound::Unbounded))
        .map(|(d, _)| d)
        .take_while(|d| d.starts_with(dir))
        .cloned()
        .collect()
}

/// Queues the changed file `path` for every watch whose root covers it.
fn dispatch(routes: &Routes, path: &Path, now: Instant, at_least: Duration) {
    let mut request = Request::new(path);
    for root in routes.roots.iter().filter(|r| r.covers(path)) {
        for (_, sub) in &root.subs {
            sub.push(path, now, at_least, &mut request);
        }
    }
}

/// The worker: (un)watches directories as they come and go, and watches for lost roots.
fn work(hub: &'static Hub, rx: &Receiver<Work>) {
    loop {
        let any_lost = read(&hub.routes).roots.iter().any(|r| r.lost.load(Ordering::Relaxed));
        let next = if any_lost {
            rx.recv_timeout(LOST_CHECK)
        } else {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        let mut guard = lock(&hub.tree);
        let Some(tree) = &mut *guard else { continue };
        match next {
            Ok(Work::NewDir(dir)) => tree.add_dir(&hub.routes, &dir),
            Ok(Work::Gone(path)) => tree.gone(&hub.routes, &path),
            Ok(Work::Rescan) => tree.rescan(&hub.routes),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if any_lost {
            tree.find_lost(&hub.routes);
        }
    }
}

impl Tree {
    /// Records that root `id` covers `dir`, watching it if it is the first.
    fn track(&mut self, dir: &Path, id: u64) -> notify::Result<()> {
        if let Some(roots) = self.dirs.get_mut(dir) {
            if !roots.contains(&id) {
                roots.push(id);
            }
            return Ok(());
        }
        self.watcher.watch(dir, RecursiveMode::NonRecursive)?;
        self.dirs.insert(dir.to_owned(), vec![id]);
        Ok(())
    }

    /// Watches the tree under `dir` for root `id`, then lists again each directory it began
    /// to watch: what was made there before its watch existed is in that listing, what was
    /// made after has an event. A directory found only then is walked and watched the same
    /// way, so the rounds end once the directories just watched hold no new one, however busy
    /// the rest of the tree is. Returns the listings, and the directories that could not be
    /// watched.
    fn watch_tree(
        &mut self,
        dir: &Path,
        filter: &Filter,
        id: u64,
    ) -> (tree::Walked, Vec<(PathBuf, notify::Error)>) {
        let mut errors = Vec::new();
        let mut out = tree::Walked::default();
        let mut tops = vec![dir.to_owned()];
        while !tops.is_empty() {
            let mut added = Vec::new();
            for top in std::mem::take(&mut tops) {
                let walked = tree::walk(&top, filter, &list_dir);
                for d in &walked.dirs {
                    if self.dirs.get(d).is_some_and(|roots| roots.contains(&id)) {
                        continue;
                    }
                    match self.track(d, id) {
                        Ok(()) => added.push(d.clone()),
                        Err(e) if errors.iter().any(|(f, _)| f == d) => drop(e),
                        Err(e) => errors.push((d.clone(), e)),
                    }
                }
                out.dirs.extend(walked.dirs);
                out.skipped.extend(walked.skipped);
                out.files.extend(walked.files);
            }
            for d in added {
                let Ok(entries) = list_dir(&d) else { continue }; // gone: its event says so
                let mut subdirs = Vec::new();
                tree::sort(entries, filter, &mut subdirs, &mut out.files);
                let new = |s: &PathBuf| {
                    !self.dirs.get(s).is_some_and(|roots| roots.contains(&id))
                        && !out.skipped.iter().any(|(d, _)| d == s)
                };
                tops.extend(subdirs.into_iter().filter(new));
            }
        }
        // a directory listed twice (walked, then listed again once watched) gives its files once
        out.files.sort_unstable();
        out.files.dedup();
        (out, errors)
    }

    /// Forgets root `id`, unwatching the directories no other root covers.
    fn untrack_root(&mut self, id: u64) {
        let mut unwatched = Vec::new();
        self.dirs.retain(|dir, roots| {
            roots.retain(|r| *r != id);
            let keep = !roots.is_empty();
            if !keep {
                unwatched.push(dir.clone());
            }
            keep
        });
        for dir in unwatched {
            let _ = self.watcher.unwatch(&dir); // gone already: nothing to undo
        }
    }

    /// A directory appeared under watched ones: watched for every root that covers it (with
    /// what is under it), and its files queued, since they may predate its watch.
    fn add_dir(&mut self, routes: &RwLock<Routes>, dir: &Path) {
        if !tree::is_dir_itself(dir) {
            return; // gone again, or a link moved in: links are not followed (`tree`)
        }
        let covering: Vec<(u64, Filter)> = read(routes)
            .roots
            .iter()
            .filter(|r| r.covers(&dir.join("_")))
            .map(|r| (r.id, r.dirs.clone()))
            .collect();
        let mut files = Vec::new();
        for (id, filter) in covering {
            let (walked, errors) = self.watch_tree(dir, &filter, id);
            for (d, e) in errors {
                let message = format!("hotreload: watch: {}", describe(&e, &d));
                for root in read(routes).roots.iter().filter(|r| r.id == id) {
                    root.report(&message);
                }
            }
            files.extend(walked.files);
        }
        let now = Instant::now();
        let routes = read(routes);
        for file in files {
            dispatch(&routes, &file, now, RESCAN_DELAY);
        }
    }

    /// Something at `path` was removed or moved away: if it is a watched directory, it and
    /// everything under it is forgotten, and a root it held is lost (reported once).
    fn gone(&mut self, routes: &RwLock<Routes>, path: &Path) {
        if !self.dirs.contains_key(path) {
            return;
        }
        {
            let routes = read(routes);
            // (only this thread sets `lost`: the report is queued before it shows)
            for root in routes.roots.iter().filter(|r| r.path.starts_with(path)) {
                if !root.lost.load(Ordering::Relaxed) {
                    root.report(&tree::lost_message(&root.path));
                    root.lost.store(true, Ordering::Release);
                }
            }
        }
        let under = under(&self.dirs, path);
        for dir in under {
            self.dirs.remove(&dir);
            let _ = self.watcher.unwatch(&dir);
        }
    }

    /// Watches again the lost roots that exist again, and queues their files.
    fn find_lost(&mut self, routes: &RwLock<Routes>) {
        let back: Vec<(u64, PathBuf, Filter)> = read(routes)
            .roots
            .iter()
            .filter(|r| r.lost.load(Ordering::Relaxed) && r.path.is_dir())
            .map(|r| (r.id, r.path.clone(), r.dirs.clone()))
            .collect();
        for (id, path, filter) in back {
            // back before the last listing, so that a save after it has its event taken
            if let Some(root) = read(routes).roots.iter().find(|r| r.id == id) {
                root.lost.store(false, Ordering::Release);
            }
            let (walked, _) = self.watch_tree(&path, &filter, id);
            let routes = read(routes);
            let Some(root) = routes.roots.iter().find(|r| r.id == id) else { continue };
            if !self.dirs.get(&path).is_some_and(|r| r.contains(&id)) {
                root.lost.store(true, Ordering::Release); // not watchable yet: try again
                continue;
            }
            let now = Instant::now();
            for file in &walked.files {
                if !root.dirs.ignores_under(&root.path, file) {
                    let mut request = Request::new(file);
                    for (_, sub) in &root.subs {
                        sub.push(file, now, RESCAN_DELAY, &mut request);
                    }
                }
            }
        }
    }

    /// After the OS dropped events: every root listed again, new directories watched, and
    /// every file queued (a file whose content did not change is not reloaded).
    fn rescan(&mut self, routes: &RwLock<Routes>) {
        // directories gone while events were lost: forgotten, so a new one there is watched
        let gone: Vec<PathBuf> =
            self.dirs.keys().filter(|d| !tree::is_dir_itself(d)).cloned().collect();
        for dir in gone {
            self.dirs.remove(&dir);
            let _ = self.watcher.unwatch(&dir);
        }
        let roots: Vec<PathBuf> = read(routes)
            .roots
            .iter()
            .filter(|r| !r.lost.load(Ordering::Relaxed))
            .map(|r| r.path.clone())
            .collect();
        for root in roots {
            self.add_dir(routes, &root);
        }
    }
}

/// For tests: how many directories under `dir` the OS watcher watches (other tests share
/// the process's watcher, so only one's own tree is counted).
pub fn watched_under(dir: &Path) -> usize {
    lock(&hub().tree).as_ref().map_or(0, |t| t.dirs.keys().filter(|d| d.starts_with(dir)).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_a_directory_are_its_descendants_only() {
        let dirs: BTreeMap<PathBuf, Vec<u64>> =
            ["/a", "/a/b", "/a/b/c", "/a/b/c/d", "/a/b.x", "/a/b-y/z", "/a/bb", "/a/b/e", "/b"]
                .iter()
                .map(|d| (PathBuf::from(d), vec![1]))
                .collect();
        let found = under(&dirs, Path::new("/a/b"));
        let want: Vec<PathBuf> =
            ["/a/b", "/a/b/c", "/a/b/c/d", "/a/b/e"].iter().map(PathBuf::from).collect();
        assert_eq!(found, want);
        assert_eq!(under(&dirs, Path::new("/a/b/c/d")), vec![PathBuf::from("/a/b/c/d")]);
        assert!(under(&dirs, Path::new("/c")).is_empty());
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hotreload-hub-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::canonicalize(dir).unwrap()
    }

    fn sub(queue: &Arc<Queue>) -> Sub {
        Sub {
            queue: queue.clone(),
            filter: Filter::new("*.lua", &[]),
            settle: Duration::ZERO,
            templates: None,
            compile: false,
        }
    }

    /// Waits until `cond` holds, up to 5 seconds.
    fn wait(cond: impl Fn() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// Waits until every event the OS reported before this call has been dispatched: saves
    /// a file in a root of its own and waits for it (one thread dispatches events, in order).
    fn settled(tag: &str) {
        let dir = scratch(&format!("{tag}-sentinel"));
        let q = Arc::new(Queue::default());
        let s = subscribe(&dir, sub(&q)).unwrap();
        std::fs::write(dir.join("sentinel.lua"), "return 1").unwrap();
        assert!(wait(|| q.len() == 1), "the sentinel's save was not seen");
        unsubscribe(&s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overlapping_roots_share_directories_and_a_save_is_queued_once() {
        let dir = scratch("overlap");
        std::fs::create_dir_all(dir.join("a")).unwrap();
        let q = Arc::new(Queue::default());
        let outer = subscribe(&dir, sub(&q)).unwrap();
        assert_eq!(watched_under(&dir), 2);
        let inner = subscribe(&dir.join("a"), sub(&q)).unwrap();
        assert_eq!(watched_under(&dir), 2, "the inner root's directory is watched already");
        std::fs::write(dir.join("a/m.lua"), "return 1").unwrap();
        settled("overlap");
        let (ready, _) = q.take_ready(Instant::now());
        assert_eq!(ready.len(), 1);
        unsubscribe(&outer);
        assert_eq!(watched_under(&dir), 1, "the root's own directory is unwatched");
        std::fs::write(dir.join("a/m.lua"), "return 2").unwrap();
        assert!(wait(|| q.len() == 1), "the inner root still sees its directory");
        unsubscribe(&inner);
        assert_eq!(watched_under(&dir), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_removed_root_is_reported_once_and_watched_again_when_it_comes_back() {
        let dir = scratch("lost");
        let q = Arc::new(Queue::default());
        let s = subscribe(&dir, sub(&q)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(wait(|| s.lost()));
        let (_, errors) = q.take_ready(Instant::now());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("removed or renamed"), "{errors:?}");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        assert!(wait(|| !s.lost()), "picked up again");
        std::fs::write(dir.join("sub/m.lua"), "return 1").unwrap();
        assert!(wait(|| !q.is_empty()), "a save in the recreated root is seen");
        unsubscribe(&s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_renamed_root_stops_reporting_under_its_old_path() {
        let dir = scratch("renamed");
        let moved = dir.with_extension("moved");
        let _ = std::fs::remove_dir_all(&moved);
        let q = Arc::new(Queue::default());
        let s = subscribe(&dir, sub(&q)).unwrap();
        std::fs::rename(&dir, &moved).unwrap();
        assert!(wait(|| s.lost()));
        let _ = q.take_ready(Instant::now());
        std::fs::write(moved.join("m.lua"), "return 1").unwrap();
        settled("renamed");
        assert_eq!(q.len(), 0, "a file of the moved tree reported under the old path");
        unsubscribe(&s);
        std::fs::remove_dir_all(&moved).unwrap();
    }

    #[test]
    fn a_directory_created_later_is_watched_and_its_files_found() {
        let dir = scratch("later");
        let q = Arc::new(Queue::default());
        let s = subscribe(&dir, sub(&q)).unwrap();
        // written at once: the file may predate the new directory's watch
        std::fs::create_dir_all(dir.join("x/y")).unwrap();
        std::fs::write(dir.join("x/y/m.lua"), "return 1").unwrap();
        assert!(wait(|| q.len() == 1));
        unsubscribe(&s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ignored_directories_are_not_watched() {
        let dir = scratch("ignored");
        for d in [".git/objects", "node_modules/x", "build", "src"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let q = Arc::new(Queue::default());
        let mut s = sub(&q);
        s.filter = Filter::new("*.lua", &["build".to_owned()]);
        let s = subscribe(&dir, s).unwrap();
        assert_eq!(watched_under(&dir), 2, "the root and src");
        std::fs::write(dir.join("build/m.lua"), "return 1").unwrap();
        std::fs::write(dir.join("src/m.lua"), "return 1").unwrap();
        settled("ignored");
        let (ready, _) = q.take_ready(Instant::now());
        assert_eq!(
            ready.iter().map(|r| r.path.clone()).collect::<Vec<_>>(),
            [dir.join("src/m.lua")]
        );
        unsubscribe(&s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
