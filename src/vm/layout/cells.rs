//! A Lua function's upvalue cells read in place, for the VM walk: what LuaJIT (`luajit/slots`) and
//! Lua 5.4 (`lua54/slots`) have in common. Each gives the offsets of its layout ([`Layout`]) and
//! its value type; both keep, in the function, an upvalue count and an array of pointers to
//! cells, and in each cell a pointer to the cell's value.
//!
//! `lua_getupvalue` also finds each upvalue's name in the prototype's debug information,
//! memory the walk otherwise never touches; reading the cells directly lets the walk call the
//! API only for the cells that hold an object. The merge, which matches upvalues by name,
//! reads the names in place too ([`Layout::name`]), and the chunk each function comes from
//! ([`Layout::source`]).

use std::marker::PhantomData;
use std::os::raw::{c_char, c_int};

use mlua::ffi as lua;

use crate::vm::capi::{self, lua_State};
use crate::vm::value::{self, Val};

/// Where a VM keeps a Lua function's cells: byte offsets of the upvalue count (one byte) and
/// of the cell array in the function, and of the value pointer in a cell; how the probe
/// checks that the function at an address, with that many upvalues, has its prototype where
/// the layout says (before reading names); and how the name of upvalue `n` (from 1) of the
/// Lua function at an address is found in its prototype, as `capi::get_upvalue` gives it
/// (`""` where the function was stripped of its names; it lives as long as the prototype);
/// and where the name of its chunk is, the very characters `lua_getinfo` gives as `source`
/// (null where the prototype has none: `lua_getinfo` then says `"=?"`); and where its
/// prototype starts, the header `name` and `source` read from.
pub struct Layout {
    pub count: usize,
    pub cells: usize,
    pub value: usize,
    pub proto_ok: unsafe fn(usize, c_int) -> bool,
    pub name: unsafe fn(usize, c_int) -> &'static [u8],
    pub source: unsafe fn(usize) -> *const c_char,
    pub proto: unsafe fn(usize) -> usize,
}

/// The upvalue cells of a Lua function, read in place; `R` is the VM's value, read as is.
pub struct Upvalues<R> {
    func: usize,
    cells: *const usize,
    n: c_int,
    value: usize,
    name: unsafe fn(usize, c_int) -> &'static [u8],
    source: unsafe fn(usize) -> *const c_char,
    proto: unsafe fn(usize) -> usize,
    _value: PhantomData<R>,
}

impl<R: Copy> Upvalues<R> {
    /// The cells of the Lua function at `p`.
    ///
    /// # Safety
    /// `p` is a live Lua function of a VM with this layout (probed, or being probed).
    pub unsafe fn of(p: usize, layout: &Layout) -> Upvalues<R> {
        // SAFETY: as documented.
        let n = unsafe { *((p + layout.count) as *const u8) };
        Upvalues {
            func: p,
            cells: (p + layout.cells) as *const usize,
            n: c_int::from(n),
            value: layout.value,
            name: layout.name,
            source: layout.source,
            proto: layout.proto,
            _value: PhantomData,
        }
    }

    /// How many upvalues the function has.
    pub fn count(&self) -> c_int {
        self.n
    }

    /// The address of cell `n` (from 1), as `lua_upvalueid` gives it.
    ///
    /// # Safety
    /// `1 <= n <= count()`; the function is still alive.
    pub unsafe fn cell(&self, n: c_int) -> usize {
        // SAFETY: as documented.
        unsafe { *self.cells.add(n as usize - 1) }
    }

    /// The name of upvalue `n` (from 1), as `capi::get_upvalue` gives it.
    ///
    /// # Safety
    /// As `cell`, and the layout was checked; the name lives as long as the function.
    pub unsafe fn name<'a>(&self, n: c_int) -> &'a [u8] {
        // SAFETY: as documented.
        unsafe { (self.name)(self.func, n) }
    }

    /// The name of the function's chunk, as `lua_getinfo`'s `source` (null if it has none).
    ///
    /// # Safety
    /// The function is still alive, and the layout was checked.
    pub unsafe fn source(&self) -> *const c_char {
        // SAFETY: as documented.
        unsafe { (self.source)(self.func) }
    }

    /// Asks the CPU to fetch what pairing this function with another reads of it after its
    /// header: its prototype's header (upvalue names, chunk name) and each of its cells (a
    /// closed cell holds its value). The function's header is read now; the rest is a hint.
    ///
    /// # Safety
    /// The function is still alive, and the layout was checked.
    pub unsafe fn prefetch(&self) {
        // SAFETY: the prototype pointer and the cell array are in the function, as the layout
        // says; what they point to is only prefetched, which never faults.
        unsafe {
            let proto = (self.proto)(self.func);
            super::prefetch(proto);
            super::prefetch(proto + 64);
            for n in 1..=self.n {
                super::prefetch(self.cell(n));
            }
        }
    }

    /// Upvalue `n` (from 1): the address of its cell (`lua_upvalueid`), and its value.
    ///
    /// # Safety
    /// As `cell`, and the layout was checked.
    pub unsafe fn get(&self, n: c_int) -> (usize, R) {
        // SAFETY: the cell is within the array; its value pointer is where the layout says.
        unsafe {
            let cell = self.cell(n);
            let v = *((cell + self.value) as *const *const R);
            (cell, *v)
        }
    }
}

/// What a VM's probe of its cells checks with, read with the layout being probed (not yet
/// published): `read` decodes a stack slot (`None`: left to the API), `push` pushes a value
/// read in place, `is_object` is the walk's test, and `c_function_is_object` what it must say
/// of a C function (a LuaJIT one is an object, a light C function of Lua 5.4 is not).
pub struct Probe<'a, R, F: Fn(c_int) -> Option<Val<'a>>> {
    pub layout: &'a Layout,
    pub read: F,
    pub push: unsafe fn(*mut lua_State, R),
    pub is_object: fn(R) -> bool,
    pub c_function_is_object: bool,
}

/// Makes a closure over four cells (a number, a table, a string and a C function, the last
/// with a name longer than Lua 5.4's short strings) and checks each cell read in place
/// against the API: its address against `lua_upvalueid` (before the cell is read), its name
/// against `capi::get_upvalue`'s (once the prototype's header is where the layout says), its
/// value pushed in place against the one `lua_getupvalue` pushes (raw equal, and read alike:
/// the number, the table and the string must be decoded), and `is_object`; and the chunk
/// name against `lua_getinfo`'s `source`, the same characters. Leaves the closure on the
/// stack; returns its index and address, for the VM's own checks.
///
/// # Safety
/// Inside a protected call, with 4 free stack slots.
pub unsafe fn probe<'a, R: Copy, F: Fn(c_int) -> Option<Val<'a>>>(
    l: *mut lua_State,
    with: &Probe<'a, R, F>,
) -> Option<(c_int, usize)> {
    let chunk =
        c"local n, t, s, a_c_function_under_a_name_of_more_than_40_bytes = 1.5, {}, 'cell', ...
        return function() return n, t, s, a_c_function_under_a_name_of_more_than_40_bytes end";
    // SAFETY: the closure and its values are on the stack while read; a cell's address is
    // compared with `lua_upvalueid` before the cell is read.
    unsafe {
        if lua::luaL_loadstring(l, chunk.as_ptr()) != 0 {
            return None;
        }
        lua::lua_pushcfunction(l, capi::noop);
        if lua::lua_pcall(l, 1, 1, 0) != 0 {
            return None;
        }
        let f = lua::lua_gettop(l);
        let Some(Val::LuaFn(p)) = (with.read)(f) else { return None };
        // (4 cells: Lua 5.4 adds no _ENV upvalue to a function that uses no global)
        let ups = Upvalues::<R>::of(p, with.layout);
        if ups.count() != 4 {
            return None;
        }
        for n in 1..=ups.count() {
            if ups.cell(n) != capi::upvalue_id(l, f, n) {
                return None;
            }
        }
        if !(with.layout.proto_ok)(p, ups.count()) {
            return None;
        }
        let mut ar: lua::lua_Debug = std::mem::zeroed();
        lua::lua_pushvalue(l, f);
        if lua::lua_getinfo(l, c">S".as_ptr(), &mut ar) == 0 || ar.source != ups.source() {
            return None;
        }
        for n in 1..=ups.count() {
            match capi::get_upvalue(l, f, n) {
                Some(name) if name == ups.name(n) => {}
                _ => return None,
            }
            let (_, value) = ups.get(n);
            let by_api = value::read_by_api(l, -1);
            (with.push)(l, value);
            let read = (with.read)(-1);
            let decoded = match by_api {
                Val::Num(_) | Val::Table(_) | Val::Str(_) => read == Some(by_api),
                _ => read.is_none_or(|v| v == by_api),
            };
            let same = decoded && lua::lua_rawequal(l, -1, -2) != 0;
            let object = match by_api {
                Val::Table(_) => true,
                Val::CFn(_) => with.c_function_is_object,
                _ => false,
            };
            lua::lua_pop(l, 2);
            if !same || (with.is_object)(value) != object {
                return None;
            }
        }
        Some((f, p))
    }
}
