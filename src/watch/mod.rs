//! Watching directories for saved Lua files. One OS watcher serves the whole process
//! (`hub`): its thread never touches Lua, and pushes changed paths into each state's queue
//! (`queue`), filtered by each watch's pattern and ignore list (`filter`, `tree`). A watch
//! (`watcher`) is a subscription to it, or a polling watcher of its own (`polling`).
//! `hotreload.poll`, on the Lua thread, takes the ready files and finds the modules each one
//! is (`targets`, over the `package.path` templates of `modname`). Saved files are compiled
//! ahead, off the Lua thread, by one worker per process (`compile`). Files are read only if
//! regular, without blocking (`source`). A process forked from a watching one has none of
//! these threads: closing what it inherited waits on none of them (`process`).

pub(crate) mod compile;
pub(crate) mod filter;
pub(crate) mod hub;
pub(crate) mod modname;
pub(crate) mod polling;
pub(crate) mod process;
pub(crate) mod queue;
pub(crate) mod source;
pub(crate) mod targets;
pub(crate) mod tree;
pub(crate) mod watcher;
