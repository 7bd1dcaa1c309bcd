//! A watch of one Lua state: a root directory, which files count, and where their changes
//! go. Most watches are subscriptions to the process's one OS watcher (`hub`); one with
//! `poll_ms` has a polling watcher of its own (`polling`), for file systems that report no
//! events. Neither ever touches Lua: changed paths go into the state's queue.

// Runs on notify's thread (or is called from it), where a panic would end the watcher
// silently: no unwrap, expect or panic outside the tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::EventKind;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};

use super::compile::Ticket;
use super::filter::Filter;
use super::hub::{self, Sub, Subscription};
use super::polling::Polled;
use super::process::Owner;
use super::queue::{Queue, Templates};

/// Options of `hotreload.watch`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Glob on file names (`*` and `?`): which files count. Default `*.lua`.
    pub pattern: String,
    /// How long a file must be quiet before it is reloaded. Default: zero where the OS
    /// reports close-after-write (Linux), 50 ms elsewhere.
    pub settle: Option<Duration>,
    /// Globs on directory names left out, on top of `filter::ALWAYS_IGNORED`.
    pub ignore: Vec<String>,
    /// Scan the tree this often instead of asking the OS for events.
    pub poll: Option<Duration>,
    /// The module search path files map to names with (default `package.path`).
    pub path: Option<String>,
    /// Compile saved files off the Lua thread (`compile`). Default on.
    pub compile_ahead: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            pattern: "*.lua".into(),
            settle: None,
            ignore: Vec::new(),
            poll: None,
            path: None,
            compile_ahead: true,
        }
    }
}

/// Why a directory cannot be watched.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchError {
    NotFound(PathBuf),
    NotADirectory(PathBuf),
    /// Files are mapped to module names as UTF-8 paths.
    NotUtf8(PathBuf),
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
            WatchError::NotUtf8(p) => write!(
                f,
                "cannot watch '{}': the path is not UTF-8 (files map to modules by UTF-8 paths)",
                p.display()
            ),
            WatchError::Limit(m) | WatchError::Os(m) => f.write_str(m),
        }
    }
}

/// A watched tree; watching stops when it is dropped.
pub struct Watch {
    root: PathBuf,
    queue: Arc<Queue>,
    how: How,
    /// The process whose threads serve it (`process`).
    owner: Owner,
    /// Keeps the compile worker running (dropped after `how` is stopped).
    _compile: Option<Ticket>,
}

enum How {
    Events(Subscription),
    Polling(Polled),
}

impl Drop for Watch {
    fn drop(&mut self) {
        match &self.how {
            How::Events(s) => hub::unsubscribe(s),
            How::Polling(p) => p.stop(),
        }
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
        if root.to_str().is_none() {
            return Err(WatchError::NotUtf8(root));
        }
        let events = opts.poll.is_none() && hub::close_events();
        let settle =
            opts.settle.unwrap_or(if events { Duration::ZERO } else { Duration::from_millis(50) });
        let templates: Templates = opts.path.as_deref().map(Arc::from);
        let compile = opts.compile_ahead.then(Ticket::take);
        let sub = Sub {
            queue: queue.clone(),
            filter: Filter::new(&opts.pattern, &opts.ignore),
            settle,
            templates,
            compile: compile.is_some(),
        };
        let how = match opts.poll {
            Some(every) => How::Polling(Polled::start(&root, sub, every)?),
            None => How::Events(hub::subscribe(&root, sub)?),
        };
        Ok(Watch { root, queue, how, owner: Owner::here(), _compile: compile })
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How often the tree is listed, if it is polled (`poll_ms`).
    pub fn polled_every(&self) -> Option<Duration> {
        match &self.how {
            How::Events(_) => None,
            How::Polling(p) => Some(p.every),
        }
    }

    /// Whether the watch was started in the process this one was forked from: it sees no
    /// change here.
    pub fn inherited(&self) -> bool {
        !self.owner.is_here()
    }

    /// Whether the root directory was removed or renamed (and is not back yet).
    pub fn lost(&self) -> bool {
        match &self.how {
            How::Events(s) => s.lost(),
            How::Polling(_) => !self.root.is_dir(),
        }
    }

    /// Stops watching, and forgets the changes it queued that no watcher in `others` (the
    /// roots still open) covers: after `close`, a watcher causes no reload.
    pub fn close(self, others: &[PathBuf]) {
        let (root, queue) = (self.root.clone(), self.queue.clone());
        drop(self);
        queue.retain(|p| !p.starts_with(&root) || others.iter().any(|o| p.starts_with(o)));
    }
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

/// A notify error as a message, naming the OS limit when one was hit.
pub fn describe(e: &notify::Error, root: &Path) -> WatchError {
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
pub fn pin_library() {
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
    use crate::watch::compile;
    use crate::watch::queue::Ready;
    use notify::event::{DataChange, RemoveKind};
    use std::time::Instant;

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

    /// Takes the ready paths as `poll` would, waiting up to `deadline` for some.
    fn take_within(q: &Queue, deadline: Duration) -> Vec<Ready> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            let (ready, errors) = q.take_ready(Instant::now());
            assert!(errors.is_empty(), "{errors:?}");
            if !ready.is_empty() {
                return ready;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Vec::new()
    }

    #[test]
    fn saves_reach_the_queue() {
        let dir = std::env::temp_dir().join(format!("hotreload-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let q = Arc::new(Queue::default());
        let w = Watch::start(&dir, &Options::default(), q.clone()).unwrap();
        std::fs::write(dir.join("a.lua"), "return 1").unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        // ready once compiled ahead (on by default)
        let ready = take_within(&q, Duration::from_secs(5));
        assert_eq!(ready, vec![Ready::plain(w.root().join("a.lua"))]);
        let compiled = compile::lookup(&w.root().join("a.lua")).expect("compiled ahead");
        assert_eq!(compiled.hash, crate::watch::source::content_hash(b"return 1"));

        // rename save
        std::fs::write(dir.join(".a.lua.tmp"), "return 2").unwrap();
        std::fs::rename(dir.join(".a.lua.tmp"), dir.join("a.lua")).unwrap();
        let ready = take_within(&q, Duration::from_secs(5));
        assert_eq!(ready, vec![Ready::plain(w.root().join("a.lua"))]);

        drop(w);
        std::fs::write(dir.join("a.lua"), "return 3").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
