//! Lua 5.4 (5.4.0 to 5.4.9, 64-bit): stack slots and upvalue cells (`slots`), tables
//! (`tables`).

pub(crate) mod slots;
pub(crate) mod tables;
