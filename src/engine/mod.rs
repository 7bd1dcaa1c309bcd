//! The reload engine. A reload is a batch of one or more modules: a transaction for
//! `reload({...})` (all or none), each module on its own for `poll`. It flows through these
//! steps, each in its own file:
//!
//! 1. `load`: find each module as `require` would (or compile the given source text) and run
//!    its new version in isolation; a table module whose new version is not a table stops
//!    here;
//! 2. `hooks`: the program's `before_reload` listeners (what they change in the new version
//!    is part of it), then the old module's `__unload` (what it clears is its clean-up);
//!    either may refuse (return `false`) or fail (raise), and then nothing is written;
//! 3. `plan`: walk new and running versions in lockstep and decide every slot, against the
//!    `base` mirror of the previous version (three-way merge);
//! 4. `apply`: write the plan into the running program and join upvalue cells, logging every
//!    value it overwrites (unless no `__reload` hook can run: a batch of one module whose two
//!    versions have none, since the merged module only has keys of the two);
//! 5. `hooks`: the merged module's `__reload`; if it raises, the log puts everything back;
//! 6. `walk` (unless turned off): replace the old functions wherever the VM still holds them,
//!    then flush LuaJIT's compiled code;
//! 7. each new version's mirror becomes the base of its next reload, and `on_reload` listeners
//!    receive the report.
//!
//! Nothing is written before step 4, and a failure after it is undone before anything else
//! sees it, so a failed reload leaves the program as it was (rule 10).
//!
//! "Rule N" in this crate's comments is rule N of `docs/semantics.md`.

pub(crate) mod apply;
pub(crate) mod base;
mod batch;
pub(crate) mod capture;
pub(crate) mod error;
pub(crate) mod graph;
pub(crate) mod hooks;
pub(crate) mod load;
pub(crate) mod plan;
pub(crate) mod proto;
pub(crate) mod ptrmap;
pub(crate) mod require;
pub(crate) mod state;
pub(crate) mod walk;

pub(crate) use batch::{Mode, Options, Report, Target, batch};
pub(crate) use load::Source;
