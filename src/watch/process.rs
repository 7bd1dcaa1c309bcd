//! Threads do not survive `fork`. A process forked from one that was watching (a server's
//! master that called `watch` before forking its workers, say) has the watching state in
//! memory but none of the threads behind it: notify's event thread, our worker, the compile
//! worker. Anything that would wait on one of them there would wait forever: notify's
//! `unwatch` waits for its event thread's answer, and joining a thread that is not there
//! never returns.
//!
//! A lock one of those threads held at the moment of the fork would stay held in the child
//! for good. So:
//! - while the process forks, every lock a watching thread takes is held by the forking
//!   thread (`guard_forks`: taken in the documented order just before `fork`, released just
//!   after it in both processes), so none is held by a thread the child does not have;
//! - each part that starts threads records the process it started them in (`Owner`). In
//!   any other process, closing a watch inherited from the parent only forgets it
//!   (`hub::unsubscribe`, the compile worker's last `Ticket`), and the first new watch
//!   starts the process's own threads, leaving the parent's parts behind
//!   (`hub::subscribe`, `compile::Ticket::take`). Inherited watches see no change in the
//!   child; `tostring` says so.

use std::any::Any;
use std::cell::RefCell;
use std::sync::Once;

use super::{compile, hub, polling};

/// Locks held across a `fork`, as guards; only the forking thread touches it.
type Held = Vec<Box<dyn Any>>;

thread_local! {
    static HELD: RefCell<Held> = const { RefCell::new(Vec::new()) };
}

/// Makes every later `fork` of the process wait until no watching thread holds a lock, and
/// hold them all across it. Called by each part before it starts a thread.
pub fn guard_forks() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        super::watcher::pin_library();
        #[cfg(unix)]
        // SAFETY: the handlers are plain functions that live as long as the process (the
        // library was just pinned, see `watcher::pin_library`), and they only take and
        // release this crate's locks.
        unsafe {
            libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork));
        }
    });
}

/// Takes the watching threads' locks in their order: a polling thread's pushes, then the
/// hub's directories and roots, then the compile worker's.
extern "C" fn before_fork() {
    let mut held: Held = Vec::new();
    polling::hold_for_fork(&mut held);
    hub::hold_for_fork(&mut held);
    compile::hold_for_fork(&mut held);
    HELD.with(|h| *h.borrow_mut() = held);
}

/// Releases them, in the parent and in the child.
extern "C" fn after_fork() {
    let held = HELD.with(|h| std::mem::take(&mut *h.borrow_mut()));
    drop(held);
}

/// The process a part's threads run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner(u32);

impl Owner {
    /// This process.
    pub fn here() -> Owner {
        Owner(std::process::id())
    }

    /// Whether this is the process the threads were started in, rather than one forked
    /// from it.
    pub fn is_here(self) -> bool {
        self == Owner::here()
    }
}
