//! The raw Lua C API the engine needs beyond what mlua wraps, with one signature for Lua 5.x
//! and LuaJIT: upvalue identity and joining, JIT flushing, GC pausing, reading a stack slot
//! as plain Rust data, and the protected call every engine entry runs inside.
//!
//! Discipline for code that calls into Lua from here on: a Lua error (out of memory, or a
//! user error) unwinds with `longjmp` on PUC Lua and with a foreign exception on LuaJIT. So
//! engine code runs inside [`protect`], keeps everything it owns in a context that lives
//! outside the protected call, and never panics on purpose (a panic is caught in the
//! trampoline and becomes a Lua error, never unwinding through Lua's C frames).

use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicU8, Ordering};

pub use mlua::ffi::*;

#[cfg(all(feature = "lua51", not(feature = "luajit")))]
compile_error!(
    "hotreload needs lua_upvaluejoin, which PUC Lua 5.1 lacks: build for Lua 5.2+ or LuaJIT"
);

// LuaJIT exports these (5.2 extensions and its own API), but mlua-sys's 5.1 bindings do not
// declare them.
#[cfg(feature = "luajit")]
#[cfg_attr(all(windows, feature = "module"), link(name = "lua51", kind = "raw-dylib"))]
unsafe extern "C-unwind" {
    pub fn lua_upvalueid(l: *mut lua_State, fidx: c_int, n: c_int) -> *mut c_void;
    pub fn lua_upvaluejoin(l: *mut lua_State, f1: c_int, n1: c_int, f2: c_int, n2: c_int);
    fn luaJIT_setmode(l: *mut lua_State, idx: c_int, mode: c_int) -> c_int;
}

/// This VM's in-place readers, where it has them: stack slots and upvalues (`jitraw` on
/// LuaJIT, `rawslot` on Lua 5.4) and tables (`jittable`, `rawtable`). The engine's one
/// choice of them: `ffi` and the walk both go through these names.
#[cfg(feature = "luajit")]
pub(crate) use crate::{jitraw as raw, jittable as tables};
#[cfg(feature = "lua54")]
pub(crate) use crate::{rawslot as raw, rawtable as tables};

/// LuaJIT's type number for cdata (`lua_type`), which mlua-sys's 5.1 bindings lack.
#[cfg(feature = "luajit")]
pub const LUA_TCDATA: c_int = 10;

/// `LUA_GCISRUNNING`: LuaJIT 2.1 answers it as 9 (2.0 answers -1: "running"), though
/// mlua-sys's 5.1 bindings lack the name; Lua 5.5 renumbered it.
#[cfg(feature = "luajit")]
const GC_ISRUNNING: c_int = 9;
#[cfg(not(feature = "luajit"))]
const GC_ISRUNNING: c_int = LUA_GCISRUNNING;

/// Name of the flavour this build was made for, exported as `hotreload.flavor`.
pub const FLAVOR: &str = if cfg!(feature = "luajit") {
    "luajit"
} else if cfg!(feature = "lua55") {
    "lua55"
} else if cfg!(feature = "lua54") {
    "lua54"
} else if cfg!(feature = "lua53") {
    "lua53"
} else {
    "lua52"
};

/// `LUA_VERSION_NUM` of the Lua this build is for (LuaJIT: none; its build links only into a
/// LuaJIT host, which alone exports `luaJIT_setmode`).
const BUILT_FOR: Option<f64> = if cfg!(feature = "luajit") {
    None
} else if cfg!(feature = "lua55") {
    Some(505.0)
} else if cfg!(feature = "lua54") {
    Some(504.0)
} else if cfg!(feature = "lua53") {
    Some(503.0)
} else {
    Some(502.0)
};

/// Why this build cannot run in the host `l`: its Lua version differs from the one the
/// module was built for. A message that says what to build instead.
///
/// # Safety
/// A valid state. Calls nothing but `lua_version`.
pub unsafe fn host_mismatch(l: *mut lua_State) -> Option<String> {
    let want = BUILT_FOR?;
    // SAFETY: 5.4 and 5.5 return the number; 5.2 and 5.3 a pointer to it. A build of one
    // pair links into a host of the other only by accident: a 5.3 host lacks symbols a 5.4
    // build needs, and the other way round, so `dlopen` refuses first.
    #[cfg(any(feature = "lua54", feature = "lua55"))]
    let host = unsafe { lua_version(l) };
    #[cfg(any(feature = "lua52", feature = "lua53"))]
    let host = unsafe { *lua_version(l) };
    #[cfg(feature = "luajit")]
    let host = {
        let _ = l;
        want
    };
    if host == want {
        return None;
    }
    let name = |v: f64| format!("Lua {}.{}", (v / 100.0) as u32, (v as u32) % 100);
    let feature = match host as u32 {
        503 => "lua53",
        504 => "lua54",
        505 => "lua55",
        _ => "<flavour>",
    };
    Some(format!(
        "hotreload: this hotreload.so was built for {} (flavour {FLAVOR}), but the host is {}: \
         build it for the host (cargo build --release --no-default-features --features \
         {feature},module, or make build/{feature}/hotreload.so)",
        name(want),
        name(host),
    ))
}

/// A stack slot read as plain data. Strings borrow the Lua string, so a `Val` is only valid
/// while that value stays on the stack.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Val<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(&'a [u8]),
    Light(usize),
    Table(usize),
    LuaFn(usize),
    CFn(usize),
    Userdata(usize),
    Thread(usize),
    /// LuaJIT's cdata: its identity (`lua_topointer`, the payload's address) and, for a
    /// 64-bit integer (`5LL`, `5ULL`) where values are read in place, its type and value.
    Cdata(usize, Option<Scalar>),
}

/// The content of an `int64_t` or `uint64_t` cdata: its ctype id and its bits.
pub type Scalar = (u16, u64);

impl Val<'_> {
    /// Tables and Lua functions: the values a merge walks into.
    pub fn object(self) -> Option<usize> {
        match self {
            Val::Table(p) | Val::LuaFn(p) => Some(p),
            _ => None,
        }
    }
}

/// Reads the value at `idx` without calling metamethods or converting anything.
///
/// # Safety
/// `idx` must be a valid index of `l`.
#[inline]
pub unsafe fn read<'a>(l: *mut lua_State, idx: c_int) -> Val<'a> {
    // SAFETY: forwarded.
    #[cfg(any(feature = "luajit", feature = "lua54"))]
    if let Some(v) = unsafe { raw::read(l, idx) } {
        return v;
    }
    // SAFETY: forwarded.
    unsafe { read_by_api(l, idx) }
}

/// The type of the value at `idx` if it is an object the walk looks into or replaces (a
/// table, a function, a full userdata or a coroutine), else `LUA_TNIL`, and, where [`read`]
/// reads in place, the address of a table or Lua function (as `lua_topointer` gives it;
/// `None`: ask `lua_topointer`). One read in place (LuaJIT's cdata reads as nil there, and is
/// not such an object either), else `lua_type`.
///
/// # Safety
/// `idx` must be a valid index of `l`.
#[inline]
pub unsafe fn object_at(l: *mut lua_State, idx: c_int) -> (c_int, Option<usize>) {
    #[cfg(any(feature = "luajit", feature = "lua54"))]
    // SAFETY: forwarded.
    if let Some(v) = unsafe { raw::read(l, idx) } {
        let t = match v {
            Val::Table(_) => LUA_TTABLE,
            Val::LuaFn(_) | Val::CFn(_) => LUA_TFUNCTION,
            Val::Userdata(_) => LUA_TUSERDATA,
            Val::Thread(_) => LUA_TTHREAD,
            _ => LUA_TNIL,
        };
        return (t, v.object());
    }
    // SAFETY: forwarded.
    match unsafe { lua_type(l, idx) } {
        t @ (LUA_TTABLE | LUA_TFUNCTION | LUA_TUSERDATA | LUA_TTHREAD) => (t, None),
        _ => (LUA_TNIL, None),
    }
}

/// Whether `read` decodes stack slots in place (LuaJIT and Lua 5.4, see `jitraw` and
/// `rawslot`) rather than through the API; the first call checks the layout.
///
/// # Safety
/// Inside a protected call, with 8 free stack slots.
pub unsafe fn reads_slots_in_place(l: *mut lua_State) -> bool {
    #[cfg(any(feature = "luajit", feature = "lua54"))]
    // SAFETY: forwarded.
    return unsafe { raw::usable(l) };
    #[cfg(not(any(feature = "luajit", feature = "lua54")))]
    {
        let _ = l;
        false
    }
}

/// Whether the walk and the merge read tables in place (LuaJIT and Lua 5.4, see `jittable`
/// and `rawtable`) rather than by `lua_next`; the first call checks the layout.
///
/// # Safety
/// Inside a protected call, with 16 free stack slots.
pub unsafe fn reads_tables_in_place(l: *mut lua_State) -> bool {
    #[cfg(any(feature = "luajit", feature = "lua54"))]
    // SAFETY: forwarded.
    return unsafe { tables::usable(l) };
    #[cfg(not(any(feature = "luajit", feature = "lua54")))]
    {
        let _ = l;
        false
    }
}

/// Whether `HOTRELOAD_PORTABLE_WALK` (set, and not `0`) keeps the engine to the C API: no
/// layout-dependent reads (`rawtable`, `rawslot`, `jitraw`).
pub fn portable() -> bool {
    std::env::var_os("HOTRELOAD_PORTABLE_WALK").is_some_and(|v| v != "0")
}

/// A layout probe's answer, found once per process (one process links one Lua): the first
/// question probes, unless [`portable`] keeps the engine to the C API.
pub struct Probed(AtomicU8);

impl Probed {
    const UNKNOWN: u8 = 0;
    const YES: u8 = 1;
    const NO: u8 = 2;

    pub const fn new() -> Probed {
        Probed(AtomicU8::new(Probed::UNKNOWN))
    }

    /// Whether the layout was probed and found: the readers' check, which never probes.
    #[inline]
    pub fn found(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Probed::YES
    }

    /// The answer, from `probe` the first time.
    pub fn get(&self, probe: impl FnOnce() -> bool) -> bool {
        match self.0.load(Ordering::Relaxed) {
            Probed::YES => true,
            Probed::NO => false,
            _ => {
                let ok = !portable() && probe();
                self.0.store(if ok { Probed::YES } else { Probed::NO }, Ordering::Relaxed);
                ok
            }
        }
    }
}

impl Default for Probed {
    fn default() -> Probed {
        Probed::new()
    }
}

/// `read` through the C API alone.
///
/// # Safety
/// As `read`.
pub unsafe fn read_by_api<'a>(l: *mut lua_State, idx: c_int) -> Val<'a> {
    // SAFETY: the caller guarantees a valid index; every accessor below matches the type tag.
    unsafe {
        match lua_type(l, idx) {
            LUA_TBOOLEAN => Val::Bool(lua_toboolean(l, idx) != 0),
            LUA_TNUMBER => number(l, idx),
            LUA_TSTRING => {
                let mut len = 0usize;
                let p = lua_tolstring(l, idx, &mut len);
                Val::Str(std::slice::from_raw_parts(p.cast::<u8>(), len))
            }
            LUA_TLIGHTUSERDATA => Val::Light(lua_touserdata(l, idx) as usize),
            LUA_TTABLE => Val::Table(lua_topointer(l, idx) as usize),
            LUA_TFUNCTION if lua_iscfunction(l, idx) != 0 => {
                Val::CFn(lua_topointer(l, idx) as usize)
            }
            LUA_TFUNCTION => Val::LuaFn(lua_topointer(l, idx) as usize),
            LUA_TUSERDATA => Val::Userdata(lua_topointer(l, idx) as usize),
            LUA_TTHREAD => Val::Thread(lua_topointer(l, idx) as usize),
            #[cfg(feature = "luajit")]
            LUA_TCDATA => Val::Cdata(lua_topointer(l, idx) as usize, None),
            _ => Val::Nil,
        }
    }
}

#[cfg(not(feature = "luajit"))]
unsafe fn number<'a>(l: *mut lua_State, idx: c_int) -> Val<'a> {
    // SAFETY: the caller checked that `idx` holds a number.
    unsafe {
        if lua_isinteger(l, idx) != 0 {
            Val::Int(lua_tointeger(l, idx))
        } else {
            Val::Num(lua_tonumber(l, idx))
        }
    }
}

#[cfg(feature = "luajit")]
unsafe fn number<'a>(l: *mut lua_State, idx: c_int) -> Val<'a> {
    // SAFETY: the caller checked that `idx` holds a number; LuaJIT has no integer subtype.
    Val::Num(unsafe { lua_tonumber(l, idx) })
}

/// Pushes the global table (the registry's, not the caller's `_ENV`).
///
/// # Safety
/// One free stack slot.
pub unsafe fn push_globals(l: *mut lua_State) {
    // SAFETY: plain push; the compat layer gives 5.1 the same call.
    unsafe {
        lua_pushglobaltable(l);
    }
}

/// Pushes `registry._LOADED` (what `package.loaded` is, even if a sandbox hid `package`).
///
/// # Safety
/// Two free stack slots.
pub unsafe fn push_loaded(l: *mut lua_State) {
    // SAFETY: `_LOADED` always exists once the package library is open; a raw get of a
    // missing key would push nil, which callers check.
    unsafe {
        lua_pushlstring(l, c"_LOADED".as_ptr(), 7);
        lua_rawget(l, LUA_REGISTRYINDEX);
    }
}

/// Name of the upvalue `n` of the function at `f`, or `None` past the last one. Leaves the
/// value on the stack when it returns `Some`. Stripped functions give `Some(b"")`.
///
/// # Safety
/// `f` must be an absolute index of a function; one free stack slot.
pub unsafe fn get_upvalue<'a>(l: *mut lua_State, f: c_int, n: c_int) -> Option<&'a [u8]> {
    // SAFETY: lua_getupvalue checks `n` against the closure's upvalue count.
    unsafe {
        let name = lua_getupvalue(l, f, n);
        if name.is_null() {
            return None;
        }
        let bytes = std::ffi::CStr::from_ptr(name).to_bytes();
        // 5.4 names a stripped upvalue "(no name)", LuaJIT ""; neither can be matched.
        Some(if bytes == b"(no name)" { b"" } else { bytes })
    }
}

/// Identity of the cell behind upvalue `n` of the Lua function at `f`.
///
/// # Safety
/// `f` must be a Lua function (not C) and `n` one of its upvalue indices.
pub unsafe fn upvalue_id(l: *mut lua_State, f: c_int, n: c_int) -> usize {
    // SAFETY: guaranteed by the caller.
    unsafe { lua_upvalueid(l, f, n) as usize }
}

/// A Lua function's upvalues as the merge reads them: names, cells and values read in place
/// where the VM's layout was probed (`cells`), else through `lua_getupvalue` and
/// `lua_upvalueid` ([`get_upvalue`], [`upvalue_id`]).
pub struct Upvalues {
    f: c_int,
    #[cfg(any(feature = "luajit", feature = "lua54"))]
    raw: Option<raw::Upvalues>,
}

impl Upvalues {
    /// The upvalues of the Lua function at `f`.
    ///
    /// # Safety
    /// `f` is an absolute index holding a Lua function, which stays there while this is used.
    pub unsafe fn of(l: *mut lua_State, f: c_int) -> Upvalues {
        #[cfg(not(any(feature = "luajit", feature = "lua54")))]
        let _ = l;
        Upvalues {
            f,
            // SAFETY: forwarded.
            #[cfg(any(feature = "luajit", feature = "lua54"))]
            raw: unsafe { raw::upvalues(l, f) },
        }
    }

    /// [`get_upvalue`]: the name of upvalue `n` with its value pushed, or `None` past the
    /// last one.
    ///
    /// # Safety
    /// One free stack slot.
    pub unsafe fn get<'a>(&self, l: *mut lua_State, n: c_int) -> Option<&'a [u8]> {
        #[cfg(any(feature = "luajit", feature = "lua54"))]
        if let Some(ups) = &self.raw {
            if n < 1 || n > ups.count() {
                return None;
            }
            // SAFETY: `n` is one of the function's upvalues; the slot is the caller's.
            unsafe {
                push_in_place(l, ups, n);
                return Some(ups.name(n));
            }
        }
        // SAFETY: forwarded.
        unsafe { get_upvalue(l, self.f, n) }
    }

    /// [`upvalue_id`] of upvalue `n`.
    ///
    /// # Safety
    /// `n` is one of the function's upvalues.
    pub unsafe fn id(&self, l: *mut lua_State, n: c_int) -> usize {
        #[cfg(any(feature = "luajit", feature = "lua54"))]
        if let Some(ups) = &self.raw {
            // SAFETY: as documented.
            return unsafe { ups.cell(n) };
        }
        // SAFETY: forwarded.
        unsafe { upvalue_id(l, self.f, n) }
    }

    /// Finds the upvalue called `name`, trying index `hint` first (versions usually keep the
    /// order).
    ///
    /// # Safety
    /// One free stack slot (the API reads names by pushing values).
    pub unsafe fn find(&self, l: *mut lua_State, name: &[u8], hint: c_int) -> Option<c_int> {
        #[cfg(any(feature = "luajit", feature = "lua54"))]
        if let Some(ups) = &self.raw {
            // SAFETY: indices within the count.
            unsafe {
                let named = |j: c_int| ups.name(j) == name;
                let count = ups.count();
                if (1..=count).contains(&hint) && named(hint) {
                    return Some(hint);
                }
                return (1..=count).find(|&j| named(j));
            }
        }
        // SAFETY: lua_getupvalue stops at the last upvalue; every value is popped.
        unsafe {
            let named = |j: c_int| {
                let found = get_upvalue(l, self.f, j);
                if found.is_some() {
                    lua_pop(l, 1);
                }
                found
            };
            if named(hint).is_some_and(|n| n == name) {
                return Some(hint);
            }
            let mut j = 1;
            while let Some(n) = named(j) {
                if n == name {
                    return Some(j);
                }
                j += 1;
            }
            None
        }
    }

    /// Pushes the value of upvalue `n`.
    ///
    /// # Safety
    /// `n` is one of the function's upvalues; one free stack slot.
    pub unsafe fn push(&self, l: *mut lua_State, n: c_int) {
        #[cfg(any(feature = "luajit", feature = "lua54"))]
        if let Some(ups) = &self.raw {
            // SAFETY: forwarded.
            unsafe { push_in_place(l, ups, n) };
            return;
        }
        // SAFETY: forwarded.
        unsafe { lua_getupvalue(l, self.f, n) };
    }

    /// Where the function's chunk name is, as `lua_getinfo`'s `source`, where it is read in
    /// place and the prototype has one; `None`: ask `lua_getinfo`.
    pub fn source(&self) -> Option<*const c_char> {
        #[cfg(any(feature = "luajit", feature = "lua54"))]
        if let Some(ups) = &self.raw {
            // SAFETY: the function is at `self.f` while this is used; the layout was probed.
            let source = unsafe { ups.source() };
            return (!source.is_null()).then_some(source);
        }
        None
    }
}

/// How many hash nodes past the one being read the in-place table cursors fetch the key and
/// value objects of (`jittable`, `rawtable`), when the merge reads every entry.
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

/// A table's entries as `lua_next` gives them, read in place where the walk reads tables in
/// place (`jittable`, `rawtable`): the same stack protocol, a key on top before each `next`.
pub struct Entries {
    t: c_int,
    #[cfg(any(feature = "luajit", feature = "lua54"))]
    cursor: Option<tables::Cursor>,
}

impl Entries {
    /// Starts on the table at `t` (absolute) and pushes the first key (nil), as a `lua_next`
    /// loop does.
    ///
    /// # Safety
    /// `t` holds a table, which is not resized while its entries are read; one free slot.
    pub unsafe fn new(l: *mut lua_State, t: c_int) -> Entries {
        // SAFETY: forwarded.
        unsafe {
            lua_pushnil(l);
            Entries {
                t,
                #[cfg(any(feature = "luajit", feature = "lua54"))]
                cursor: tables::usable(l).then(|| tables::Cursor::new(l, t)),
            }
        }
    }

    /// `lua_next`: pops the key on top and pushes the next entry's key and value, or pushes
    /// nothing at the end.
    ///
    /// # Safety
    /// The key `next` pushed last (or `new` first) is on top; one more free slot.
    pub unsafe fn next(&mut self, l: *mut lua_State) -> bool {
        #[cfg(any(feature = "luajit", feature = "lua54"))]
        if let Some(cursor) = &mut self.cursor {
            // SAFETY: the key on top is ours; the table was not resized, and holds the entry
            // while it is on the stack.
            unsafe {
                tables::pop(l, 1);
                return match cursor.next_entry() {
                    Some(slot) => {
                        slot.push(l);
                        true
                    }
                    None => false,
                };
            }
        }
        // SAFETY: forwarded.
        unsafe { lua_next(l, self.t) != 0 }
    }
}

/// Whether the table `p` at `t` has no entries and no metatable.
///
/// # Safety
/// `t` holds the table `p`; two free stack slots.
pub unsafe fn is_bare_table(l: *mut lua_State, t: c_int, p: usize) -> bool {
    // SAFETY: forwarded; the API pushes are popped.
    unsafe {
        #[cfg(any(feature = "luajit", feature = "lua54"))]
        if tables::usable(l) {
            return !tables::has_metatable(p) && tables::Cursor::of(p).next_entry().is_none();
        }
        let _ = p;
        if lua_getmetatable(l, t) != 0 {
            lua_pop(l, 1);
            return false;
        }
        lua_pushnil(l);
        if lua_next(l, t) != 0 {
            lua_pop(l, 2);
            return false;
        }
        true
    }
}

/// Pushes the value of upvalue `n` read in place.
///
/// # Safety
/// `n` is one of the function's upvalues; one free stack slot.
#[cfg(any(feature = "luajit", feature = "lua54"))]
unsafe fn push_in_place(l: *mut lua_State, ups: &raw::Upvalues, n: c_int) {
    // SAFETY: forwarded.
    unsafe { raw::push(l, ups.get(n).1) }
}

/// Makes upvalue `n1` of Lua function `f1` refer to the cell of upvalue `n2` of `f2`.
///
/// # Safety
/// Both must be Lua functions with those upvalue indices (the API does not check them).
pub unsafe fn join_upvalue(l: *mut lua_State, f1: c_int, n1: c_int, f2: c_int, n2: c_int) {
    // SAFETY: guaranteed by the caller.
    unsafe { lua_upvaluejoin(l, f1, n1, f2, n2) }
}

/// Throws away all JIT-compiled code: traces may have inlined an old function or kept an old
/// upvalue cell, and would go on running it after a reload. A no-op for PUC Lua.
///
/// # Safety
/// A valid state.
pub unsafe fn flush_jit(l: *mut lua_State) {
    #[cfg(feature = "luajit")]
    // SAFETY: LUAJIT_MODE_ENGINE (0) | LUAJIT_MODE_FLUSH (0x0200) on the whole engine.
    unsafe {
        luaJIT_setmode(l, 0, 0x0200);
    }
    let _ = l;
}

/// Keeps the collector from taking any step for the lifetime of the guard, so that no
/// finalizer runs user code while a merge is half planned or half applied, and the walk reads
/// tables no collection step changes. Does nothing if the program stopped the collector.
///
/// Stopping it (`LUA_GCSTOP`) would do, but restarting it makes the collector due at once
/// (5.3 and 5.4 set its debt to zero), so every reload would start a collection step the
/// program's pace had not asked for. Where the debt can be moved by the API (5.3 and 5.4,
/// 64-bit), the guard instead lowers it by far more than a reload allocates and raises it
/// back by the same amount: the collector then resumes with the debt it would have had, as
/// if the reload's allocations had happened without a pause.
pub struct GcPause {
    l: *mut lua_State,
    held: Hold,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// The collector was not running; nothing to undo.
    Nothing,
    /// Its debt is lowered by `DEBT_SHIFT_KB`.
    Debt,
    /// It is stopped.
    Stopped,
}

/// How far the debt is lowered: 2^30 KB (1 TB), more than any reload can allocate. Only for
/// 64-bit builds, where Lua's debt counter (`l_mem`) holds it.
const DEBT_SHIFT_KB: c_int = 1 << 30;

/// Whether the collector can be held by its debt (see `GcPause`).
const HOLD_BY_DEBT: bool =
    cfg!(any(feature = "lua53", feature = "lua54")) && cfg!(target_pointer_width = "64");

impl GcPause {
    /// # Safety
    /// The guard must be dropped while `l` is still open, outside any protected call that
    /// could be unwound past it.
    pub unsafe fn new(l: *mut lua_State) -> GcPause {
        let mut pause = GcPause { l, held: Hold::Nothing };
        // SAFETY: forwarded.
        unsafe { pause.hold() };
        pause
    }

    /// Runs `f` (user code: hooks, listeners) with the collector as the program left it, and
    /// holds it again afterwards, whatever `f` did to it.
    ///
    /// # Safety
    /// As `new`; if `f` unwinds, the collector stays released.
    pub unsafe fn lifted<R>(&mut self, f: impl FnOnce() -> R) -> R {
        // SAFETY: forwarded.
        unsafe {
            self.release();
            let r = f();
            self.hold();
            r
        }
    }

    unsafe fn hold(&mut self) {
        // SAFETY: lua_gc with these options neither raises nor allocates; a negative step
        // only lowers the debt (`luaC_checkGC` then has nothing to do).
        unsafe {
            if gc(self.l, GC_ISRUNNING) == 0 {
                self.held = Hold::Nothing;
            } else if HOLD_BY_DEBT {
                gc_step(self.l, -DEBT_SHIFT_KB);
                self.held = Hold::Debt;
            } else {
                gc(self.l, LUA_GCSTOP);
                self.held = Hold::Stopped;
            }
        }
    }

    unsafe fn release(&mut self) {
        // SAFETY: RESTART does not raise; raising the debt back may run a collection step,
        // which may call finalizers (they run protected, as in any allocation).
        unsafe {
            match self.held {
                Hold::Nothing => {}
                Hold::Debt => gc_step(self.l, DEBT_SHIFT_KB),
                Hold::Stopped => {
                    gc(self.l, LUA_GCRESTART);
                }
            }
        }
        self.held = Hold::Nothing;
    }
}

impl Drop for GcPause {
    fn drop(&mut self) {
        // SAFETY: `new`'s contract keeps the state open.
        unsafe { self.release() };
    }
}

/// `LUA_GCSTEP` with `kb` kilobytes: on 5.3 and 5.4 (only used there), adds `kb * 1024` to
/// the collector's debt and takes a step if the debt is then positive.
unsafe fn gc_step(l: *mut lua_State, kb: c_int) {
    // SAFETY: forwarded.
    unsafe {
        lua_gc(l, LUA_GCSTEP, kb);
    }
}

#[cfg(any(feature = "lua54", feature = "lua55"))]
unsafe fn gc(l: *mut lua_State, what: c_int) -> c_int {
    // SAFETY: forwarded.
    unsafe { lua_gc(l, what) }
}

#[cfg(not(any(feature = "lua54", feature = "lua55")))]
unsafe fn gc(l: *mut lua_State, what: c_int) -> c_int {
    // SAFETY: forwarded.
    unsafe { lua_gc(l, what, 0) }
}

/// `lua_rawgeti` for a caller with no use for the type it returns: mlua's LuaJIT binding
/// asks `lua_type` for it after every call, the engine's commonest (pushing anchored objects).
///
/// # Safety
/// As `lua_rawgeti`; `n` fits a C int on LuaJIT (anchor slots do).
#[inline]
pub unsafe fn rawgeti(l: *mut lua_State, idx: c_int, n: u32) {
    // SAFETY: as documented.
    unsafe {
        #[cfg(feature = "luajit")]
        lua_rawgeti_(l, idx, c_int::try_from(n).unwrap_or(0));
        #[cfg(not(feature = "luajit"))]
        lua_rawgeti(l, idx, lua_Integer::from(n));
    }
}

/// An anchor table (the plan's): at stack index `idx` while it is on the stack, else held in
/// another table (`held`: that table's index and the key; a batch keeps its plans there, so
/// that a batch of any size fits the Lua stack); and on LuaJIT, where tables are read in
/// place, the table's address, so that its array part is read (`get`) and, while the table
/// is `unmarked`, written (`store`) without the C API.
#[derive(Clone, Copy, Debug)]
pub struct Anchors {
    /// stack index, 0 while the table is only `held`
    pub idx: c_int,
    held: Option<(c_int, lua_Integer)>,
    #[cfg_attr(not(feature = "luajit"), allow(dead_code))]
    table: usize,
    /// The collector has not marked the table since it was made: made while the collector is
    /// held (see [`GcPause`]), and the hold not lifted since. Such a table needs no write
    /// barrier.
    #[cfg_attr(not(feature = "luajit"), allow(dead_code))]
    unmarked: bool,
}

impl Anchors {
    /// The table at the absolute index `idx`; `unmarked` as the field says.
    ///
    /// # Safety
    /// `idx` holds a table, which stays there while this is used; inside `protect`; if
    /// `unmarked`, writes stop before the collector is released ([`Anchors::sealed`]).
    pub unsafe fn at(l: *mut lua_State, idx: c_int, unmarked: bool) -> Anchors {
        #[cfg(feature = "luajit")]
        // SAFETY: forwarded.
        if unsafe { tables::usable(l) }
            && let Some(Val::Table(table)) = unsafe { raw::read(l, idx) }
        {
            return Anchors { idx, held: None, table, unmarked };
        }
        let _ = l;
        Anchors { idx, held: None, table: 0, unmarked }
    }

    /// The same table, written through the API from now on (the collector may run).
    pub fn sealed(self) -> Anchors {
        Anchors { unmarked: false, ..self }
    }

    /// Stores the table in `holder[key]` (`holder` an absolute index) and reads and writes it
    /// there from now on: its stack slot may go.
    ///
    /// # Safety
    /// The table is at `idx`; `holder` is a table that stays at its index while this is used.
    pub unsafe fn hold(&mut self, l: *mut lua_State, holder: c_int, key: lua_Integer) {
        // SAFETY: as documented.
        unsafe {
            lua_pushvalue(l, self.idx);
            lua_rawseti(l, holder, key);
        }
        self.held = Some((holder, key));
        self.idx = 0;
    }

    /// Pushes the table (also while it is held) and makes that its stack index until
    /// [`Anchors::unplace`].
    ///
    /// # Safety
    /// One free stack slot; the slot pushed stays until `unplace`.
    pub unsafe fn place(&mut self, l: *mut lua_State) -> c_int {
        // SAFETY: forwarded.
        unsafe {
            self.push_table(l);
            self.idx = lua_gettop(l);
        }
        self.idx
    }

    /// Back to reading the table where it is held (the caller drops the slot `place` made).
    pub fn unplace(&mut self) {
        if self.held.is_some() {
            self.idx = 0;
        }
    }

    /// Pushes the table itself.
    ///
    /// # Safety
    /// One free stack slot.
    pub unsafe fn push_table(&self, l: *mut lua_State) {
        // SAFETY: the table is at `idx`, or held.
        unsafe {
            match (self.idx, self.held) {
                (0, Some((holder, key))) => {
                    rawgeti_any(l, holder, key);
                }
                (idx, _) => lua_pushvalue(l, idx),
            }
        }
    }

    /// Pushes slot `n`, as [`rawgeti`].
    ///
    /// # Safety
    /// As `rawgeti`.
    #[inline]
    pub unsafe fn get(self, l: *mut lua_State, n: u32) {
        // SAFETY: as documented; in place, the slot is in the array part, and the stack slot
        // the caller's.
        unsafe {
            #[cfg(feature = "luajit")]
            if self.table != 0
                && let Some(slot) = tables::array_slot(self.table, n)
            {
                raw::push(l, raw::Raw(*slot));
                return;
            }
            if self.idx == 0 {
                self.push_table(l);
                rawgeti(l, -1, n);
                lua_remove(l, -2);
                return;
            }
            rawgeti(l, self.idx, n);
        }
    }

    /// Stores the value at `v` (absolute) in slot `n`, raw: on LuaJIT in place while the
    /// table is unmarked and slot `n` is in the array part, else by `lua_rawseti`.
    ///
    /// # Safety
    /// A valid index; two free stack slots; inside `protect` (may allocate).
    #[inline]
    pub unsafe fn store(self, l: *mut lua_State, n: u32, v: c_int) {
        // SAFETY: as documented; in place, the slot is in the array part, and the table
        // unmarked (no barrier owed).
        unsafe {
            #[cfg(feature = "luajit")]
            if self.unmarked
                && self.table != 0
                && let Some(slot) = tables::array_slot(self.table, n)
                && let Some(value) = raw::raw_at(l, v)
            {
                *slot = value.0;
                return;
            }
            if self.idx == 0 {
                self.push_table(l);
                lua_pushvalue(l, v);
                lua_rawseti(l, -2, lua_Integer::from(n));
                lua_pop(l, 1);
                return;
            }
            lua_pushvalue(l, v);
            lua_rawseti(l, self.idx, lua_Integer::from(n));
        }
    }
}

/// `lua_rawgeti` with any integer key, its result type unused.
///
/// # Safety
/// As `lua_rawgeti`.
unsafe fn rawgeti_any(l: *mut lua_State, idx: c_int, n: lua_Integer) {
    // SAFETY: as documented.
    unsafe {
        #[cfg(feature = "luajit")]
        lua_rawgeti_(l, idx, c_int::try_from(n).unwrap_or(0));
        #[cfg(not(feature = "luajit"))]
        lua_rawgeti(l, idx, n);
    }
}

/// `lua_rawget` for a caller with no use for the type it returns (see [`rawgeti`]).
///
/// # Safety
/// As `lua_rawget`.
#[inline]
pub unsafe fn rawget(l: *mut lua_State, idx: c_int) {
    // SAFETY: as documented.
    unsafe {
        #[cfg(feature = "luajit")]
        lua_rawget_(l, idx);
        #[cfg(not(feature = "luajit"))]
        lua_rawget(l, idx);
    }
}

/// `lua_settop` down to the index `idx` (positive, at or below the top): in place where
/// slots are read in place. The merge ends every slot it decides with one.
///
/// # Safety
/// As `lua_settop`; the values dropped are the caller's own.
#[inline]
pub unsafe fn settop_down(l: *mut lua_State, idx: c_int) {
    // SAFETY: forwarded.
    unsafe {
        #[cfg(any(feature = "luajit", feature = "lua54"))]
        if raw::drop_to(l, idx) {
            return;
        }
        lua_settop(l, idx);
    }
}

/// `string.dump` of the Lua function at `idx`, with its debug information (the merge needs
/// upvalue names; messages need lines). `None` for a C function.
///
/// # Safety
/// `idx` valid; one free stack slot; may raise on memory errors.
pub unsafe fn dump(l: *mut lua_State, idx: c_int) -> Option<Vec<u8>> {
    unsafe extern "C-unwind" fn writer(
        _: *mut lua_State,
        p: *const c_void,
        sz: usize,
        ud: *mut c_void,
    ) -> c_int {
        // (Lua 5.5 ends a dump with a call of no bytes at NULL)
        if sz == 0 || p.is_null() {
            return 0;
        }
        // SAFETY: `ud` is the Vec below; Lua passes `sz` readable bytes at `p`.
        unsafe {
            let out = &mut *ud.cast::<Vec<u8>>();
            out.extend_from_slice(std::slice::from_raw_parts(p.cast::<u8>(), sz));
        }
        0
    }
    let mut bytes: Vec<u8> = Vec::new();
    // SAFETY: lua_dump reads the function on top and calls `writer` synchronously.
    unsafe {
        lua_pushvalue(l, idx);
        let ok = lua_iscfunction(l, -1) == 0
            && lua_dump(l, writer, (&mut bytes as *mut Vec<u8>).cast(), 0) == 0;
        lua_pop(l, 1);
        ok.then_some(bytes)
    }
}

/// Whether the functions at `a` and `b` come from chunks of the same name (`lua_getinfo`'s
/// `source`: the same file, for functions loaded from files).
///
/// # Safety
/// Both hold functions; one free stack slot.
pub unsafe fn same_chunk(l: *mut lua_State, a: c_int, b: c_int) -> bool {
    // SAFETY: lua_getinfo(">S") pops the function pushed for it; `source` points into the
    // prototype, alive while the function is on the stack.
    unsafe {
        let source = |idx: c_int| {
            let mut ar: lua_Debug = std::mem::zeroed();
            lua_pushvalue(l, idx);
            if lua_getinfo(l, c">S".as_ptr(), &mut ar) == 0 || ar.source.is_null() {
                return None;
            }
            Some(std::ffi::CStr::from_ptr(ar.source))
        };
        matches!((source(a), source(b)), (Some(x), Some(y)) if x == y)
    }
}

/// Pushes a Rust string as a Lua string.
///
/// # Safety
/// One free stack slot; may raise on memory errors.
pub unsafe fn push_bytes(l: *mut lua_State, s: &[u8]) {
    // SAFETY: the pointer and length describe `s`.
    unsafe {
        lua_pushlstring(l, s.as_ptr().cast::<c_char>(), s.len());
    }
}

/// Lua's name for the type of the value at `idx` (`"nil"`, `"table"`, ...).
///
/// # Safety
/// `idx` must be acceptable to `lua_type`.
pub unsafe fn type_name(l: *mut lua_State, idx: c_int) -> &'static str {
    // SAFETY: lua_typename returns static strings.
    unsafe {
        let t = lua_type(l, idx);
        std::ffi::CStr::from_ptr(lua_typename(l, t)).to_str().unwrap_or("?")
    }
}

/// Converts the value at `idx` to bytes for a message, as `lua.c` reports an error object:
/// strings and numbers as they are, a value with `__tostring` through it (protected), anything
/// else as "(error object is a X value)".
///
/// # Safety
/// `idx` valid; three free stack slots. Runs user code (`__tostring`) under protection.
pub unsafe fn describe(l: *mut lua_State, idx: c_int) -> String {
    // SAFETY: every call is a plain stack operation; the metamethod runs under lua_pcall.
    unsafe {
        let idx = lua_absindex(l, idx);
        match lua_type(l, idx) {
            LUA_TSTRING | LUA_TNUMBER => {
                lua_pushvalue(l, idx);
                let mut len = 0usize;
                let p = lua_tolstring(l, -1, &mut len);
                let s = String::from_utf8_lossy(std::slice::from_raw_parts(p.cast::<u8>(), len))
                    .into_owned();
                lua_pop(l, 1);
                s
            }
            _ => {
                let has_tostring = luaL_getmetafield(l, idx, c"__tostring".as_ptr()) != LUA_TNIL;
                if has_tostring {
                    lua_pushvalue(l, idx);
                    if lua_pcall(l, 1, 1, 0) == LUA_OK && lua_type(l, -1) == LUA_TSTRING {
                        let s = describe(l, -1);
                        lua_pop(l, 1);
                        return s;
                    }
                    lua_pop(l, 1);
                }
                format!("(error object is a {} value)", type_name(l, idx))
            }
        }
    }
}

/// Runs `f` inside `lua_pcall`, with the `nargs` values on top of the stack as its stack
/// indices `1..=nargs` (the protected frame cannot see the caller's stack otherwise).
/// `Ok(n)`: `f` returned normally and left `n` results, which replace the arguments.
/// `Err(message)`: a Lua error (memory) or a Rust panic inside `f`; arguments popped.
///
/// # Safety
/// Three free stack slots. `f` must keep anything it owns outside itself (see the module doc).
pub unsafe fn protect(
    l: *mut lua_State,
    nargs: c_int,
    f: &mut dyn FnMut(*mut lua_State) -> c_int,
) -> Result<c_int, String> {
    struct Payload<'a> {
        f: &'a mut dyn FnMut(*mut lua_State) -> c_int,
    }

    unsafe extern "C-unwind" fn trampoline(l: *mut lua_State) -> c_int {
        // SAFETY: `protect` passed a light userdata pointing at a live Payload first.
        let payload = unsafe {
            let p = lua_touserdata(l, 1).cast::<Payload>();
            lua_remove(l, 1);
            &mut *p
        };
        // LuaJIT raises errors as foreign exceptions, which unwind through Rust frames to
        // `lua_pcall`, but abort the process in a `catch_unwind` frame: so there is none on
        // LuaJIT, and a Lua error inside `f` (out of memory, a bad key) is caught by the
        // `lua_pcall` below like on PUC Lua. (A Rust panic would abort there either way:
        // LuaJIT cannot hand a Rust panic back. The engine never panics on purpose.)
        #[cfg(feature = "luajit")]
        return (payload.f)(l);
        #[cfg(not(feature = "luajit"))]
        // SAFETY: forwarded.
        unsafe {
            caught(l, payload.f)
        }
    }

    let mut payload = Payload { f };
    // SAFETY: the payload outlives the call; the trampoline only runs inside lua_pcall.
    unsafe {
        let base = lua_gettop(l) - nargs;
        lua_pushcfunction(l, trampoline);
        lua_insert(l, base + 1);
        lua_pushlightuserdata(l, (&mut payload as *mut Payload).cast::<c_void>());
        lua_insert(l, base + 2);
        if lua_pcall(l, nargs + 1, LUA_MULTRET, 0) == LUA_OK {
            Ok(lua_gettop(l) - base)
        } else {
            let message = describe(l, -1);
            lua_settop(l, base);
            Err(message)
        }
    }
}

/// Runs `f`, turning a Rust panic into a Lua error (PUC Lua, whose errors are `longjmp`s
/// that a `catch_unwind` frame does not see).
///
/// # Safety
/// Inside a C function called by `lua_pcall`.
#[cfg(not(feature = "luajit"))]
unsafe fn caught(l: *mut lua_State, f: &mut dyn FnMut(*mut lua_State) -> c_int) -> c_int {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    match catch_unwind(AssertUnwindSafe(|| f(l))) {
        Ok(n) => n,
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("panic");
            let message = format!("hotreload: internal error: {text}");
            drop(panic);
            // SAFETY: the message is copied into Lua before it is dropped; nothing owned is
            // alive when lua_error unwinds out of this frame.
            unsafe {
                push_bytes(l, message.as_bytes());
                drop(message);
                lua_error(l)
            }
        }
    }
}

/// What the tests of in-place readers share: a check run on a real stack.
#[cfg(test)]
pub(crate) mod testing {
    use super::{lua_State, lua_settop, push_bytes};

    /// Whether this VM has the layouts the in-place readers know (64-bit Lua 5.4, 64-bit-object
    /// LuaJIT), so their probes must accept it; elsewhere they must refuse it (the matrix
    /// runs the tests on a LuaJIT without GC64 too).
    pub(crate) fn supported_layout() -> bool {
        // (in a state of its own with every library: mlua's safe states have no `ffi`; one
        // process links one Lua, so its answer is this one's)
        // SAFETY: the state only runs the line below.
        let lua = unsafe { mlua::Lua::unsafe_new() };
        let gc64: bool = lua
            .load("local ok, ffi = pcall(require, 'ffi') return not jit or ok and ffi.abi('gc64')")
            .eval()
            .unwrap_or(false);
        cfg!(target_pointer_width = "64")
            && cfg!(any(feature = "lua54", feature = "luajit"))
            && gc64
    }

    /// Runs `check` inside a protected call on `lua`'s stack, with `args` pushed first
    /// (index 1 on), and fails the test with every line `check` wrote into the failures.
    ///
    /// # Safety
    /// `check` uses the stack as the C API allows; whatever it leaves there is dropped.
    pub(crate) unsafe fn assert_raw(
        lua: &mlua::Lua,
        args: impl mlua::IntoLuaMulti,
        check: impl FnOnce(*mut lua_State, &mut String),
    ) {
        // SAFETY: as documented; the failures are the one value returned.
        let failures: String = unsafe {
            lua.exec_raw(args, |l| {
                let mut failures = String::new();
                check(l, &mut failures);
                lua_settop(l, 0);
                push_bytes(l, failures.as_bytes());
            })
        }
        .unwrap();
        assert!(failures.is_empty(), "{failures}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::Lua;

    #[test]
    fn settop_down_agrees_with_lua_settop() {
        // SAFETY: integers are pushed and dropped above the callback's own slots.
        unsafe {
            let lua = Lua::new();
            let supported = testing::supported_layout();
            testing::assert_raw(&lua, (), |l, failures| {
                let in_place = reads_slots_in_place(l);
                if in_place != (supported && !portable()) {
                    failures.push_str("slots are read in place where supported, unless portable\n");
                }
                let base = lua_gettop(l);
                for i in 1..=6 {
                    lua_pushinteger(l, i);
                }
                settop_down(l, base + 4);
                if lua_gettop(l) != base + 4 || lua_tointeger(l, -1) != 4 {
                    failures.push_str("down to 4 values\n");
                }
                // above the top: left to the API, which fills with nils
                settop_down(l, base + 6);
                if lua_gettop(l) != base + 6 || lua_type(l, -2) != LUA_TNIL {
                    failures.push_str("up to 6 values\n");
                }
                settop_down(l, base);
                if lua_gettop(l) != base {
                    failures.push_str("down to none\n");
                }
            });
        }
    }

    #[test]
    fn anchors_agree_with_the_api() {
        let lua = Lua::new();
        // SAFETY: the table is made and written while the collector is held, as an unmarked
        // `Anchors` asks; slots past its array part go through the API.
        unsafe {
            testing::assert_raw(&lua, (), |l, failures| {
                let gc = GcPause::new(l);
                lua_createtable(l, 4, 0);
                let t = lua_gettop(l);
                let anchors = Anchors::at(l, t, true);
                for n in 1..=12u32 {
                    match n % 3 {
                        0 => lua_pushinteger(l, lua_Integer::from(n)),
                        1 => push_bytes(l, format!("s{n}").as_bytes()),
                        _ => lua_createtable(l, 0, 0),
                    }
                    anchors.store(l, n, lua_gettop(l));
                    lua_pop(l, 1);
                }
                for n in 1..=12u32 {
                    anchors.get(l, n);
                    lua_rawgeti(l, t, lua_Integer::from(n));
                    if lua_rawequal(l, -1, -2) == 0 || lua_type(l, -1) == LUA_TNIL {
                        failures.push_str(&format!("slot {n} reads back differently\n"));
                    }
                    lua_pop(l, 2);
                }
                if lua_gettop(l) != t {
                    failures.push_str("the stack is not where it was\n");
                }
                drop(gc);
            });
        }
    }

    #[test]
    fn bare_tables_and_object_types() {
        let lua = Lua::new();
        let values: mlua::MultiValue = lua
            .load(
                "local emptied = { x = 1, 2 }; emptied.x = nil; emptied[1] = nil
                 return {}, { nil, nil }, emptied, { 1 }, { a = false },
                   setmetatable({}, {}), print, function() end, coroutine.create(print),
                   'text', 1, true",
            )
            .eval()
            .unwrap();
        let bare = [true, true, true, false, false, false];
        let types = [LUA_TTABLE; 6].into_iter().chain([
            LUA_TFUNCTION,
            LUA_TFUNCTION,
            LUA_TTHREAD,
            LUA_TNIL,
            LUA_TNIL,
            LUA_TNIL,
        ]);
        // SAFETY: the values are at 1.., each read where it is; `is_bare_table` has its two
        // free slots (the callback's stack has LUA_MINSTACK).
        unsafe {
            testing::assert_raw(&lua, values, |l, failures| {
                let top = lua_gettop(l);
                for (i, want) in bare.into_iter().enumerate() {
                    let at = i as c_int + 1;
                    let p = lua_topointer(l, at) as usize;
                    if is_bare_table(l, at, p) != want || lua_gettop(l) != top {
                        failures.push_str(&format!("value {at}: bare should be {want}\n"));
                    }
                }
                for (i, want) in types.enumerate() {
                    let at = i as c_int + 1;
                    if object_at(l, at).0 != want {
                        failures.push_str(&format!("value {at}: object type should be {want}\n"));
                    }
                }
            });
        }
    }
}
