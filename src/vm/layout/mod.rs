//! The in-place readers of the VM's own structures, one folder per VM, and the probe that
//! validates every layout fact they rely on against the C API when a state opens the
//! module. Where a fact cannot be validated (another VM, a 32-bit build, a LuaJIT without
//! 64-bit objects), nothing reads in place and `access` keeps to the C API.
//!
//! The facts each reader relies on are listed in its file's header (`lua54/`, `luajit/`,
//! `cells`); `probe` checks the table layouts on tables shaped so that each fact matters.

#[cfg(any(feature = "luajit", feature = "lua54"))]
use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(any(feature = "luajit", feature = "lua54"))]
pub(crate) mod cells;
#[cfg(any(feature = "luajit", feature = "lua54"))]
pub(crate) mod cursor;
#[cfg(feature = "lua54")]
pub(crate) mod lua54;
#[cfg(feature = "luajit")]
pub(crate) mod luajit;
#[cfg(any(feature = "luajit", feature = "lua54"))]
pub(crate) mod probe;

#[cfg(feature = "lua54")]
pub(crate) use lua54::{slots as raw, tables};
/// This VM's in-place readers, where it has them: stack slots and upvalues (`raw`) and
/// tables (`tables`). `access` is their only user.
#[cfg(feature = "luajit")]
pub(crate) use luajit::{slots as raw, tables};

#[cfg_attr(not(any(feature = "luajit", feature = "lua54")), allow(dead_code))]
/// Whether `HOTRELOAD_PORTABLE_WALK` (set, and not `0`) keeps the engine to the C API: no
/// layout-dependent reads.
pub(crate) fn portable() -> bool {
    std::env::var_os("HOTRELOAD_PORTABLE_WALK").is_some_and(|v| v != "0")
}

#[cfg(any(feature = "luajit", feature = "lua54"))]
/// A layout probe's answer, found once per process (one process links one Lua): the first
/// question probes, unless [`portable`] keeps the engine to the C API. A probe may also find
/// which of a few variants of the layout the VM has (a field at one of two offsets).
pub(crate) struct Probed(AtomicU8);

#[cfg(any(feature = "luajit", feature = "lua54"))]
impl Probed {
    const UNKNOWN: u8 = 0;
    const NO: u8 = u8::MAX;

    pub(crate) const fn new() -> Probed {
        Probed(AtomicU8::new(Probed::UNKNOWN))
    }

    /// The variant found, if the layout was probed and found: the readers' check, which
    /// never probes.
    #[inline]
    pub(crate) fn variant(&self) -> Option<u8> {
        match self.0.load(Ordering::Relaxed) {
            Probed::UNKNOWN | Probed::NO => None,
            v => Some(v - 1),
        }
    }

    /// Whether the layout was probed and found.
    #[inline]
    pub(crate) fn found(&self) -> bool {
        self.variant().is_some()
    }

    /// The variant, from `probe` the first time (`None`: not this layout).
    pub(crate) fn get_variant(&self, probe: impl FnOnce() -> Option<u8>) -> Option<u8> {
        if self.0.load(Ordering::Relaxed) == Probed::UNKNOWN {
            let found = if portable() { None } else { probe() };
            let answer = found.filter(|&v| v < Probed::NO - 1).map_or(Probed::NO, |v| v + 1);
            self.0.store(answer, Ordering::Relaxed);
        }
        self.variant()
    }

    /// The answer, from `probe` the first time.
    pub(crate) fn get(&self, probe: impl FnOnce() -> bool) -> bool {
        self.get_variant(|| probe().then_some(0)).is_some()
    }
}

#[cfg(any(feature = "luajit", feature = "lua54"))]
/// How many hash nodes past the one being read the in-place table cursors fetch the key and
/// value objects of (`luajit/tables`, `lua54/tables`), when the merge reads every entry.
pub const PREFETCH_AHEAD: usize = 4;

/// Asks the CPU to bring the object at `addr` into the cache ahead of its use: a hint, which
/// never faults, whatever the address.
pub fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and cannot fault.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}
