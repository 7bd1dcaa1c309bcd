//! Watching a directory tree for changed Lua files. The event handler runs on notify's own
//! thread: it never touches Lua, only classifies events and pushes paths into the state's
//! queue. Dropping a [`Watch`] drops the notify watcher, which ends its thread.

// Runs on notify's thread (or is called from it), where a panic would end the watcher
// silently: no unwrap, expect or panic outside the tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher, WatcherKind};

use super::queue::Queue;

/// Options of `hotreload.watch`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Glob on file names (`*` and `?`): which files count. Default `*.lua`.
    pub pattern: String,
    /// How long a file must be quiet before it is reloaded. Default: zero where the OS
    /// reports close-after-write (Linux), 50 ms elsewhere.
    pub settle: Option<Duration>,
}

impl Default for Options {
    fn default() -> Options {
        Options { pattern: "*.lua".into(), settle: None }
    }
}

/// Why a directory cannot be watched.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchError {
    NotFound(PathBuf),
    NotADirectory(PathBuf),
    /// The OS limit on watches or watcher instances; says which and how to raise it.
    Limit(String),
    Os(String),
}

impl fmt::Display for WatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchError::NotFound(p) => {
                write!(f, "cannot watch '{}': no such directory", p.display())
            }
            WatchError::NotADirectory(p) => {
                write!(f, "cannot watch '{}': not a directory", p.display())
            }
            WatchError::Limit(m) | WatchError::Os(m) => f.write_str(m),
        }
    }
}

/// A watched tree; watching stops when it is dropped.
pub struct Watch {
    root: PathBuf,
    /// Closed by `drop` before the watcher goes: notify's thread may still deliver events it
    /// read before it saw the shutdown, and those must not reach the queue.
    gate: Arc<RwLock<bool>>,
    queue: Arc<Queue>,
    _watcher: RecommendedWatcher,
}

impl Drop for Watch {
    fn drop(&mut self) {
        *self.gate.write().unwrap_or_else(PoisonError::into_inner) = false;
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").field("root", &self.root).finish()
    }
}

impl Watch {
    /// Starts watching `dir` (recursively) into `queue`.
    pub fn start(dir: &Path, opts: &Options, queue: Arc<Queue>) -> Result<Watch, WatchError> {
        let root = match std::fs::canonicalize(dir) {
            Ok(root) => root,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(WatchError::NotFound(dir.to_owned()));
            }
            Err(e) => return Err(WatchError::Os(format!("cannot watch '{}': {e}", dir.display()))),
        };
        if !root.is_dir() {
            return Err(WatchError::NotADirectory(dir.to_owned()));
        }
        let close_events = RecommendedWatcher::kind() == WatcherKind::Inotify;
        let settle = opts.settle.unwrap_or(if close_events {
            Duration::ZERO
        } else {
            Duration::from_millis(50)
        });
        let filter = Filter { pattern: opts.pattern.clone() };
        let gate = Arc::new(RwLock::new(true));
        let sink = Sink {
            queue: queue.clone(),
            filter,
            settle,
            close_events,
            root: root.clone(),
            gate: gate.clone(),
            rescans: Arc::default(),
        };
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<Event>| sink.handle(res))
                .map_err(|e| describe(&e, &root))?;
        watcher.watch(&root, RecursiveMode::Recursive).map_err(|e| describe(&e, &root))?;
        pin_library();
        Ok(Watch { root, gate, queue, _watcher: watcher })
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stops watching, and forgets the changes it queued that no watcher in `others` (the
    /// roots still open) covers: after `close`, a watcher causes no reload.
    pub fn close(self, others: &[PathBuf]) {
        let (root, queue) = (self.root.clone(), self.queue.clone());
        drop(self);
        queue.retain(|p| !p.starts_with(&root) || others.iter().any(|o| p.starts_with(o)));
    }
}

/// Which file names count.
#[derive(Clone, Debug)]
struct Filter {
    pattern: String,
}

impl Filter {
    fn wants(&self, path: &Path) -> bool {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
        wanted(name, &self.pattern)
    }
}

/// Whether a file name counts: it matches the pattern and is not an editor's lock, backup or
/// temporary file (`.#x.lua` from Emacs, `x.lua~` backups, `.x.lua.swp`, `x.lua___jb_tmp___`).
pub fn wanted(name: &str, pattern: &str) -> bool {
    !name.starts_with(".#") && !name.ends_with('~') && glob(pattern.as_bytes(), name.as_bytes())
}

/// `*` and `?` glob matching of a whole name.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == name.get(n) => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern.get(p..).is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// What an event means for the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// These paths now hold new content.
    Changed,
    /// A directory appeared: files may have been written into it before its watch existed.
    Scan,
    Ignore,
}

/// Classifies an event. With `close_events` (inotify), content is complete only when the
/// writer closes the file or renames it into place: the first modify event of a half-written
/// file, and the create that precedes a write, are ignored.
pub fn classify(kind: &EventKind, close_events: bool) -> Action {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Action::Changed,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Any)) => Action::Changed,
        EventKind::Create(CreateKind::Folder) => Action::Scan,
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
            if !close_events =>
        {
            Action::Changed
        }
        _ => Action::Ignore,
    }
}

/// How long after a directory appears it is listed again: notify reports the directory
/// before it adds the directory's own watch, so a file written in between has no event.
const RESCAN_DELAY: Duration = Duration::from_millis(50);

/// File times can lag the clock by a timer tick: a file modified this long before the first
/// listing still counts as written after it (at worst it reloads twice).
const MTIME_SLACK: Duration = Duration::from_millis(20);

/// The event handler's state: everything it needs, nothing of Lua.
#[derive(Clone)]
struct Sink {
    queue: Arc<Queue>,
    filter: Filter,
    settle: Duration,
    close_events: bool,
    root: PathBuf,
    gate: Arc<RwLock<bool>>,
    rescans: Arc<Mutex<Rescans>>,
}

impl Sink {
    fn handle(&self, res: notify::Result<Event>) {
        // Held while pushing, so that once `Watch::drop` returns nothing more arrives.
        let open = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        if !*open {
            return;
        }
        let now = Instant::now();
        match res {
            Ok(event) if event.need_rescan() => self.scan(&self.root, now),
            Ok(event) => match classify(&event.kind, self.close_events) {
                Action::Changed => {
                    for path in &event.paths {
                        if path.is_dir() {
                            self.scan(path, now); // a directory renamed into the tree
                            self.rescan_later(path);
                        } else if self.filter.wants(path) {
                            self.queue.push(path.clone(), now, self.settle);
                        }
                    }
                }
                Action::Scan => {
                    for path in &event.paths {
                        self.scan(path, now);
                        self.rescan_later(path);
                    }
                }
                Action::Ignore => {}
            },
            Err(e) => {
                self.queue.push_error(format!("hotreload: watch: {}", describe(&e, &self.root)))
            }
        }
    }

    /// Lists `dir` again after `RESCAN_DELAY`, for the files written in it since `now`. One
    /// worker thread at a time serves every pending directory (a checkout that creates
    /// thousands of them starts one thread), and stops once the watch is closed.
    fn rescan_later(&self, dir: &Path) {
        let since = SystemTime::now().checked_sub(MTIME_SLACK).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut pending = self.rescans.lock().unwrap_or_else(PoisonError::into_inner);
        pending.dirs.push((dir.to_owned(), since));
        if pending.worker {
            return;
        }
        pending.worker = true;
        drop(pending);
        let sink = self.clone();
        let spawned =
            std::thread::Builder::new().name("hotreload-rescan".into()).spawn(move || {
                loop {
                    std::thread::sleep(RESCAN_DELAY);
                    let dirs = {
                        let mut pending =
                            sink.rescans.lock().unwrap_or_else(PoisonError::into_inner);
                        if pending.dirs.is_empty() {
                            pending.worker = false;
                            return;
                        }
                        std::mem::take(&mut pending.dirs)
                    };
                    let open = sink.gate.read().unwrap_or_else(PoisonError::into_inner);
                    if !*open {
                        continue; // closed: the next turn finds nothing more and stops
                    }
                    for (i, (dir, since)) in dirs.iter().enumerate() {
                        // a directory inside another one of this turn is listed with it
                        let inside = dirs.iter().enumerate().any(|(j, (other, _))| {
                            j != i && dir.starts_with(other) && dir != other
                        });
                        if !inside {
                            sink.scan_since(dir, Instant::now(), Some(*since));
                        }
                    }
                }
            });
        if spawned.is_err() {
            // no thread: the first listing stands; let the next directory try again
            self.rescans.lock().unwrap_or_else(PoisonError::into_inner).worker = false;
        }
    }

    /// Queues every wanted file under `dir` (iteratively; symlinked directories are not
    /// followed, so a link cycle cannot loop).
    fn scan(&self, dir: &Path, now: Instant) {
        self.scan_since(dir, now, None);
    }

    /// `scan`, keeping only files modified at or after `since`. Those a rescan finds wait at
    /// least `RESCAN_DELAY`, so that the close event of a file still being written merges
    /// with them instead of leaving a half-written file ready.
    fn scan_since(&self, dir: &Path, now: Instant, since: Option<SystemTime>) {
        let settle = if since.is_some() { self.settle.max(RESCAN_DELAY) } else { self.settle };
        let mut dirs = vec![dir.to_owned()];
        while let Some(d) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                match entry.file_type() {
                    Ok(t) if t.is_dir() => dirs.push(path),
                    Ok(_) if self.filter.wants(&path) => {
                        let modified = entry.metadata().and_then(|m| m.modified()).ok();
                        let new_enough = match (since, modified) {
                            (Some(since), Some(m)) => m >= since,
                            _ => true,
                        };
                        if new_enough {
                            self.queue.push(path, now, settle);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Directories waiting for their second listing, and whether a worker is serving them.
#[derive(Default)]
struct Rescans {
    dirs: Vec<(PathBuf, SystemTime)>,
    worker: bool,
}

/// A notify error as a message, naming the OS limit when one was hit.
fn describe(e: &notify::Error, root: &Path) -> WatchError {
    let limit = |name: &str, what: &str| {
        let value = std::fs::read_to_string(format!("/proc/sys/fs/inotify/{name}"))
            .map(|v| format!(" = {}", v.trim()))
            .unwrap_or_default();
        WatchError::Limit(format!(
            "cannot watch '{}': the OS limit on {what} is reached (fs.inotify.{name}{value}); \
             raise it with sysctl",
            root.display()
        ))
    };
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => limit("max_user_watches", "inotify watches"),
        // inotify_init fails with EMFILE when the user has too many inotify instances
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(24) && cfg!(target_os = "linux") => {
            limit("max_user_instances", "inotify instances")
        }
        notify::ErrorKind::PathNotFound => WatchError::NotFound(root.to_owned()),
        _ => WatchError::Os(format!("cannot watch '{}': {e}", root.display())),
    }
}

/// Keeps this shared library mapped until the process ends. notify's threads finish shortly
/// after a watcher is dropped, which can be after `lua_close` unloaded the module: they must
/// not find their code gone.
fn pin_library() {
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    {
        use std::os::raw::{c_char, c_int, c_void};
        use std::sync::Once;

        #[repr(C)]
        struct DlInfo {
            fname: *const c_char,
            fbase: *mut c_void,
            sname: *const c_char,
            saddr: *mut c_void,
        }
        unsafe extern "C" {
            fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
            fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
        }
        #[cfg(target_os = "linux")]
        const FLAGS: c_int = 0x2 | 0x4 | 0x1000; // RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE
        #[cfg(target_os = "macos")]
        const FLAGS: c_int = 0x2 | 0x10 | 0x80;

        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let mut info = DlInfo {
                fname: std::ptr::null(),
                fbase: std::ptr::null_mut(),
                sname: std::ptr::null(),
                saddr: std::ptr::null_mut(),
            };
            // SAFETY: dladdr fills `info` for an address inside this library; dlopen with
            // RTLD_NOLOAD only takes another reference to the already loaded library (the
            // handle is kept forever on purpose).
            unsafe {
                if dladdr(pin_library as *const c_void, &mut info) != 0 && !info.fname.is_null() {
                    dlopen(info.fname, FLAGS);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, RemoveKind};

    #[test]
    fn a_file_written_after_its_new_directory_was_reported_is_found_by_the_rescan() {
        let root = std::env::temp_dir().join(format!("hotreload-rescan-{}", std::process::id()));
        let dir = root.join("pkg");
        std::fs::create_dir_all(&dir).unwrap();
        let queue = Arc::new(Queue::default());
        let sink = Sink {
            queue: queue.clone(),
            filter: Filter { pattern: "*.lua".into() },
            settle: Duration::ZERO,
            close_events: true,
            root: root.clone(),
            gate: Arc::new(RwLock::new(true)),
            rescans: Arc::default(),
        };
        // notify reports the directory (then adds its watch): it is empty at that moment
        sink.handle(Ok(Event::new(EventKind::Create(CreateKind::Folder)).add_path(dir.clone())));
        assert_eq!(queue.len(), 0);
        // a file written before the directory's watch exists has no event of its own
        std::fs::write(dir.join("init.lua"), "return {}").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while queue.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(queue.len(), 1, "the delayed rescan did not find the file");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn editor_events_on_inotify() {
        use Action::*;
        let cases: &[(EventKind, Action, &str)] = &[
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                Changed,
                "in-place write done",
            ),
            (EventKind::Modify(ModifyKind::Name(RenameMode::To)), Changed, "temp renamed over"),
            (EventKind::Modify(ModifyKind::Name(RenameMode::From)), Ignore, "moved away"),
            (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), Ignore, "To already seen"),
            (EventKind::Modify(ModifyKind::Data(DataChange::Any)), Ignore, "half-written"),
            (EventKind::Create(CreateKind::File), Ignore, "close-write follows"),
            (EventKind::Create(CreateKind::Folder), Scan, "new directory"),
            (EventKind::Remove(RemoveKind::File), Ignore, "deleted: module stays"),
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), Ignore, "open"),
        ];
        for (kind, want, why) in cases {
            assert_eq!(classify(kind, true), *want, "{why}");
        }
    }

    #[test]
    fn without_close_events_modifications_count() {
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert_eq!(classify(&data, false), Action::Changed);
        assert_eq!(classify(&EventKind::Create(CreateKind::File), false), Action::Changed);
    }

    #[test]
    fn file_names() {
        assert!(wanted("player.lua", "*.lua"));
        assert!(wanted("init.lua", "*.lua"));
        assert!(!wanted("player.lua~", "*.lua"), "backup");
        assert!(!wanted(".#player.lua", "*.lua"), "emacs lock");
        assert!(!wanted(".player.lua.swp", "*.lua"), "vim swap");
        assert!(!wanted("player.lua___jb_tmp___", "*.lua"), "jetbrains temp");
        assert!(!wanted("4913", "*.lua"), "vim's probe file");
        assert!(!wanted("notes.txt", "*.lua"));
        assert!(wanted("a.moon", "*.moon"));
        assert!(wanted("level_1.lua", "level_?.lua"));
        assert!(wanted("x.lua", "*"));
        assert!(!wanted("x.luac", "*.lua"));
        assert!(wanted("a.b.c.lua", "*.*.lua"));
    }

    #[test]
    fn missing_and_non_directory_roots() {
        let q = Arc::new(Queue::default());
        let missing = Path::new("/definitely/not/here");
        assert_eq!(
            Watch::start(missing, &Options::default(), q.clone()).unwrap_err(),
            WatchError::NotFound(missing.to_owned())
        );
        let file = std::env::current_exe().unwrap();
        assert!(matches!(
            Watch::start(&file, &Options::default(), q).unwrap_err(),
            WatchError::NotADirectory(_)
        ));
    }

    /// Waits up to `deadline` for the queue to hold `n` paths.
    fn wait_for(q: &Queue, n: usize, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if q.len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn saves_reach_the_queue() {
        let dir = std::env::temp_dir().join(format!("hotreload-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let q = Arc::new(Queue::default());
        let w = Watch::start(&dir, &Options::default(), q.clone()).unwrap();
        std::fs::write(dir.join("a.lua"), "return 1").unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        assert!(wait_for(&q, 1, Duration::from_secs(5)));
        let (paths, errors) = q.take_ready(Instant::now());
        assert!(errors.is_empty());
        assert_eq!(paths, vec![w.root().join("a.lua")]);

        // rename save
        std::fs::write(dir.join(".a.lua.tmp"), "return 2").unwrap();
        std::fs::rename(dir.join(".a.lua.tmp"), dir.join("a.lua")).unwrap();
        assert!(wait_for(&q, 1, Duration::from_secs(5)));
        assert_eq!(q.take_ready(Instant::now()).0, vec![w.root().join("a.lua")]);

        drop(w);
        std::fs::write(dir.join("a.lua"), "return 3").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
