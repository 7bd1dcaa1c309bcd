//! LuaJIT 2.1 with 64-bit objects (GC64): stack slots, values and upvalue cells (`slots`),
//! tables (`tables`).

pub(crate) mod slots;
pub(crate) mod tables;
