//! `watch(dir, {poll_ms = N})`: notify's polling watcher, for file systems that report no
//! events (network mounts, some container bind mounts, Windows drives seen from WSL). It
//! lists the tree every N ms on a thread of its own and compares modification times and
//! contents; a changed or new file goes into the state's queue like an event would.

// Runs on notify's polling thread, where a panic would end the watcher silently.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use notify::{Config, Event, EventKind, PollWatcher, RecursiveMode, Watcher};

use super::compile::Request;
use super::hub::Sub;
use super::watcher::{WatchError, describe, pin_library};

/// A polled tree; stops (at its next turn) when dropped.
pub struct Polled {
    pub every: Duration,
    /// Closed by `stop` before the watcher goes: its thread may be in the middle of a scan,
    /// and what it finds then must not reach the queue.
    gate: Arc<RwLock<bool>>,
    _watcher: PollWatcher,
}

impl Polled {
    /// Starts polling `root` (canonical) every `every` for `sub`.
    pub fn start(root: &Path, sub: Sub, every: Duration) -> Result<Polled, WatchError> {
        let gate = Arc::new(RwLock::new(true));
        let open = gate.clone();
        let root_path = root.to_owned();
        let handler = move |res: notify::Result<Event>| {
            let open = open.read().unwrap_or_else(PoisonError::into_inner);
            if *open {
                take(&root_path, &sub, res);
            }
        };
        // notify compares modification times in whole seconds: two saves within a second
        // differ only by their contents, so the contents are compared too
        let config = Config::default()
            .with_poll_interval(every)
            .with_follow_symlinks(false)
            .with_compare_contents(true);
        let mut watcher = PollWatcher::new(handler, config).map_err(|e| describe(&e, root))?;
        watcher.watch(root, RecursiveMode::Recursive).map_err(|e| describe(&e, root))?;
        pin_library();
        Ok(Polled { every, gate, _watcher: watcher })
    }

    /// Once this returns, nothing more reaches the queue.
    pub fn stop(&self) {
        *self.gate.write().unwrap_or_else(PoisonError::into_inner) = false;
    }
}

/// What a scan found: new and modified files count (a removed one leaves its module as it
/// is).
fn take(root: &Path, sub: &Sub, res: notify::Result<Event>) {
    match res {
        Ok(event) if matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_)) => {
            let now = Instant::now();
            for path in &event.paths {
                if path.is_file() && !sub.filter.ignores_under(root, path) {
                    sub.push(path, now, Duration::ZERO, &mut Request::new(path));
                }
            }
        }
        Ok(_) => {}
        Err(e) => sub.queue.push_error(format!("hotreload: watch: {}", describe(&e, root))),
    }
}
