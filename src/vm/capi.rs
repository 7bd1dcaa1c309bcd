//! The raw Lua C API beyond what mlua-sys declares, with one signature for Lua 5.x and
//! LuaJIT: upvalue identity and joining, JIT flushing, the version check, pushing common
//! values, `string.dump`, messages of error objects, and the protected call every engine
//! entry runs inside.
//!
//! Discipline for code that calls into Lua: a Lua error (out of memory, or a user error)
//! unwinds with `longjmp` on PUC Lua and with a foreign exception on LuaJIT. So engine code
//! runs inside [`protect`], keeps everything it owns in a context that lives outside the
//! protected call, and never panics on purpose (on PUC Lua a panic is caught in the
//! trampoline and becomes a Lua error; on LuaJIT no `catch_unwind` frame may stand between a
//! Lua error and `lua_pcall`, so a panic aborts there).

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};

use mlua::ffi::*;

pub(crate) use mlua::ffi::{lua_CFunction, lua_Integer, lua_State};

#[cfg(all(feature = "lua51", not(feature = "luajit")))]
compile_error!(
    "hotreload needs lua_upvaluejoin, which PUC Lua 5.1 lacks: build for Lua 5.2+ or LuaJIT"
);

// LuaJIT exports these (5.2 extensions and its own API), but mlua-sys's 5.1 bindings do not
// declare them.
#[cfg(feature = "luajit")]
#[cfg_attr(all(windows, feature = "module"), link(name = "lua51", kind = "raw-dylib"))]
unsafe extern "C-unwind" {
    pub(crate) fn lua_upvalueid(l: *mut lua_State, fidx: c_int, n: c_int) -> *mut c_void;
    pub(crate) fn lua_upvaluejoin(l: *mut lua_State, f1: c_int, n1: c_int, f2: c_int, n2: c_int);
    fn luaJIT_setmode(l: *mut lua_State, idx: c_int, mode: c_int) -> c_int;
}

/// LuaJIT's type number for cdata (`lua_type`), which mlua-sys's 5.1 bindings lack.
#[cfg(feature = "luajit")]
pub const LUA_TCDATA: c_int = 10;

/// `LUA_GCISRUNNING`: LuaJIT 2.1 answers it as 9 (2.0 answers -1: "running"), though
/// mlua-sys's 5.1 bindings lack the name; Lua 5.5 renumbered it.
#[cfg(feature = "luajit")]
pub(crate) const GC_ISRUNNING: c_int = 9;
#[cfg(not(feature = "luajit"))]
pub(crate) const GC_ISRUNNING: c_int = LUA_GCISRUNNING;

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

#[cfg(feature = "module")]
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

#[cfg(feature = "module")]
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
    // SAFETY: `l` is a valid state; 5.3's `lua_version` returns the address of a static
    // number, never null.
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

/// `lua_rawgeti` with any integer key, its result type unused.
///
/// # Safety
/// As `lua_rawgeti`.
pub(crate) unsafe fn rawgeti_any(l: *mut lua_State, idx: c_int, n: lua_Integer) {
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

/// `luaL_checkstack` with hotreload's message: makes room for `n` more values or raises
/// "hotreload: Lua stack exhausted".
///
/// # Safety
/// May raise (inside a protected call, or where the caller owns nothing).
pub(crate) unsafe fn check_stack(l: *mut lua_State, n: c_int) {
    // SAFETY: as documented.
    unsafe { luaL_checkstack(l, n, c"hotreload: Lua stack exhausted".as_ptr()) }
}

/// A C function that does nothing: a stand-in where a C function of our own is needed (a
/// probe's light C function, a metatable's root for the walk).
pub(crate) unsafe extern "C-unwind" fn noop(_: *mut lua_State) -> c_int {
    0
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

/// Pushes a full userdata that owns a `T::default()` (boxed, freed by its `__gc`), with a
/// metatable named `name`.
///
/// # Safety
/// Inside a protected call (allocates); three free stack slots.
pub(crate) unsafe fn push_boxed<T: Default>(l: *mut lua_State, name: &CStr) {
    unsafe extern "C-unwind" fn gc<T>(l: *mut lua_State) -> c_int {
        // SAFETY: only ever the `__gc` of a userdata `push_boxed::<T>` made, which holds a
        // box pointer or null.
        unsafe {
            let ud = lua_touserdata(l, 1).cast::<*mut T>();
            if !ud.is_null() && !(*ud).is_null() {
                let boxed = Box::from_raw(*ud);
                *ud = std::ptr::null_mut();
                drop(boxed);
            }
        }
        0
    }
    // SAFETY: the userdata is sized for one pointer and initialised (null) before anything
    // else can run; its `__gc` is the only place the box is freed.
    unsafe {
        let ud = lua_newuserdata(l, size_of::<*mut T>()).cast::<*mut T>();
        ud.write(std::ptr::null_mut());
        lua_createtable(l, 0, 2);
        lua_pushcfunction(l, gc::<T>);
        lua_setfield(l, -2, c"__gc".as_ptr());
        lua_pushstring(l, name.as_ptr());
        lua_setfield(l, -2, c"__name".as_ptr());
        lua_setmetatable(l, -2);
        ud.write(Box::into_raw(Box::<T>::default()));
    }
}

/// The `T` behind a userdata `push_boxed::<T>` made, at `idx`; `None` once it was collected
/// (a function called from a finalizer during `lua_close`).
///
/// # Safety
/// `idx` holds a userdata `push_boxed::<T>` made.
pub(crate) unsafe fn get_boxed<'a, T>(l: *mut lua_State, idx: c_int) -> Option<&'a T> {
    // SAFETY: the box lives until `__gc` nulls the pointer.
    unsafe {
        let ud = lua_touserdata(l, idx).cast::<*mut T>();
        if ud.is_null() { None } else { (*ud).as_ref() }
    }
}

/// `package.path`, read raw, if it is a string.
///
/// # Safety
/// Three free stack slots; raises only on a memory error.
pub(crate) unsafe fn package_path(l: *mut lua_State) -> Option<String> {
    // SAFETY: raw reads; the string is copied before it is popped.
    unsafe {
        let top = lua_gettop(l);
        push_loaded(l);
        push_bytes(l, b"package");
        let mut path = None;
        if lua_rawget(l, -2) == LUA_TTABLE {
            push_bytes(l, b"path");
            if lua_rawget(l, -2) == LUA_TSTRING
                && let super::value::Val::Str(s) = super::access::read(l, -1)
            {
                path = Some(String::from_utf8_lossy(s).into_owned());
            }
        }
        lua_settop(l, top);
        path
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
