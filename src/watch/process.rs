//! Threads do not survive `fork`. A process forked from one that was watching (a server's
//! master that called `watch` before forking its workers, say) has the watching state in
//! memory but none of the threads behind it: notify's event thread, our worker, the compile
//! worker. Anything that would wait on one of them there would wait forever: notify's
//! `unwatch` waits for its event thread's answer, and joining a thread that is not there
//! never returns.
//!
//! So each part that starts threads records the process it started them in (`Owner`), and
//! in any other process:
//! - closing a watch inherited from the parent only forgets it (`hub::unsubscribe`, the
//!   compile worker's last `Ticket`);
//! - the first new watch starts the process's own threads, leaving the parent's parts
//!   behind (`hub::subscribe`, `compile::Ticket::take`). Inherited watches see no change in
//!   the child; `tostring` says so.

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
