//! Everything that touches the Lua VM below its API, and the shims over the C API itself.
//! The engine reads the VM only through `access`; `layout` holds the unsafe in-place readers
//! and the probe that validates them; `capi` the C API calls mlua-sys lacks; `gc` the hold on
//! the collector during a reload; `registry` every key hotreload keeps in the registry.

pub(crate) mod access;
pub(crate) mod capi;
pub(crate) mod gc;
pub(crate) mod layout;
pub(crate) mod registry;
pub(crate) mod scratch;
pub(crate) mod value;
