//! Watching directories for saved Lua files: a notify thread per watcher that never touches
//! Lua (`watcher`) records changed paths in a queue (`queue`); `hotreload.poll`, on the Lua
//! thread, takes the ready ones and finds the modules each file is (`targets`, over the
//! `package.path` templates of `modname`).

pub(crate) mod modname;
pub(crate) mod queue;
pub(crate) mod targets;
pub(crate) mod watcher;
