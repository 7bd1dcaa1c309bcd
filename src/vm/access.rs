//! The only reads of the VM the engine may use: a stack slot as plain data, a function's
//! upvalues, a table's entries, the stack top. Each reads in place where the layout probe
//! (`layout`) validated the VM's structures, and through the C API otherwise.

use std::os::raw::{c_char, c_int};

use mlua::ffi::*;

use super::capi::{get_upvalue, upvalue_id};
pub(crate) use super::layout::prefetch;
#[cfg(any(feature = "luajit", feature = "lua54"))]
use super::layout::{raw, tables};
pub(crate) use super::value::{Val, read_by_api};

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

/// Whether `read` decodes stack slots in place (LuaJIT and Lua 5.4, see `luajit/slots` and
/// `lua54/slots`) rather than through the API; the first call checks the layout.
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

/// Whether the walk and the merge read tables in place (LuaJIT and Lua 5.4, see `luajit/tables`
/// and `lua54/tables`) rather than by `lua_next`; the first call checks the layout.
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

/// Asks the CPU to fetch what the merge reads of the Lua function at `p` once it has its
/// header (its prototype, its cells), where slots are read in place; nothing otherwise.
///
/// # Safety
/// `p` is a live Lua function's address, as [`read`] gave it (`Val::LuaFn`).
pub unsafe fn prefetch_function(p: usize) {
    #[cfg(any(feature = "luajit", feature = "lua54"))]
    // SAFETY: forwarded.
    unsafe {
        raw::prefetch_function(p)
    };
    #[cfg(not(any(feature = "luajit", feature = "lua54")))]
    let _ = p;
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

    /// The function's chunk name, where it is read in place and the prototype has one;
    /// `None`: ask `lua_getinfo`.
    pub fn source(&self) -> Option<ChunkName> {
        #[cfg(any(feature = "luajit", feature = "lua54"))]
        if let Some(ups) = &self.raw {
            // SAFETY: the function is at `self.f` while this is used; the layout was probed.
            let source = unsafe { ups.source() };
            return (!source.is_null()).then_some(ChunkName(source));
        }
        None
    }
}

/// A Lua function's chunk name as read in place: the characters `lua_getinfo` gives as
/// `source`, which live as long as the function's prototype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkName(*const c_char);

impl ChunkName {
    /// Identifies the name's string (functions of one chunk share it).
    pub(crate) fn id(self) -> usize {
        self.0 as usize
    }

    /// The name's characters.
    ///
    /// # Safety
    /// A function it was read from is still alive.
    pub(crate) unsafe fn to_bytes<'a>(self) -> &'a [u8] {
        // SAFETY: a Lua string, zero-terminated, alive with its function (as documented).
        unsafe { std::ffi::CStr::from_ptr(self.0) }.to_bytes()
    }
}

/// A table's entries as `lua_next` gives them, read in place where the walk reads tables in
/// place (`luajit/tables`, `lua54/tables`): the same stack protocol, a key on top before each
/// `next`.
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

/// The in-place readers the walk steps through tables and closures with, where
/// [`reads_tables_in_place`] and [`reads_slots_in_place`] said yes (LuaJIT with 64-bit
/// objects, Lua 5.4): a cursor over a table's slots that hands over only those holding an
/// object, and a closure's upvalue cells.
#[cfg(any(feature = "luajit", feature = "lua54"))]
pub(crate) mod in_place {
    #[cfg(feature = "luajit")]
    pub(crate) use crate::vm::layout::raw::env_of;
    pub(crate) use crate::vm::layout::raw::{push, upvalues};
    pub(crate) use crate::vm::layout::tables::{Cursor, has_metatable, pop, push_table};
}

/// The address of the table at `idx`, where tables are read in place (so that its array
/// part can be read and written through [`push_array_slot`] and [`store_array_slot`]).
///
/// # Safety
/// `idx` is a valid index; inside a protected call (the first call probes).
pub(crate) unsafe fn table_address(l: *mut lua_State, idx: c_int) -> Option<usize> {
    #[cfg(feature = "luajit")]
    {
        // SAFETY: inside a protected call, as the caller promises; probes on first use.
        let usable = unsafe { tables::usable(l) };
        if usable {
            // SAFETY: `idx` is valid and the layout was just validated by the probe.
            if let Some(Val::Table(table)) = unsafe { raw::read(l, idx) } {
                return Some(table);
            }
        }
    }
    let _ = (l, idx);
    None
}

/// Pushes slot `n` of the table at `table` (from [`table_address`]) if it is in the array
/// part; false where the API must do it.
///
/// # Safety
/// `table` is live; one free stack slot.
#[inline]
pub(crate) unsafe fn push_array_slot(l: *mut lua_State, table: usize, n: u32) -> bool {
    #[cfg(feature = "luajit")]
    // SAFETY: `table` is live (the caller's promise) and was read in place.
    if let Some(slot) = unsafe { tables::array_slot(table, n) } {
        // SAFETY: `array_slot` returned a slot inside the array part; the caller left one
        // free stack slot for the push.
        unsafe { raw::push(l, raw::Raw(*slot)) };
        return true;
    }
    let _ = (l, table, n);
    false
}

/// Stores the value at `v` in slot `n` of the table at `table` (from [`table_address`]) if
/// the slot is in the array part and the value reads in place; false where the API must do
/// it. No write barrier is taken.
///
/// # Safety
/// `table` is live and owes no write barrier: the collector has not marked it since it was
/// made (it was made, and is written, while the collector is held).
#[inline]
pub(crate) unsafe fn store_array_slot(l: *mut lua_State, table: usize, n: u32, v: c_int) -> bool {
    #[cfg(feature = "luajit")]
    // SAFETY: `table` is live (the caller's promise) and was read in place.
    if let Some(slot) = unsafe { tables::array_slot(table, n) } {
        // SAFETY: `v` is a valid index; `raw_at` declines values it cannot copy.
        if let Some(value) = unsafe { raw::raw_at(l, v) } {
            // SAFETY: the slot is inside the array part, and the table owes no write
            // barrier (it was made and is written while the collector is held).
            unsafe { *slot = value.0 };
            return true;
        }
    }
    let _ = (l, table, n, v);
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::capi::testing;
    use mlua::Lua;

    #[test]
    fn settop_down_agrees_with_lua_settop() {
        // SAFETY: integers are pushed and dropped above the callback's own slots.
        unsafe {
            let lua = Lua::new();
            let supported = testing::supported_layout();
            testing::assert_raw(&lua, (), |l, failures| {
                let in_place = reads_slots_in_place(l);
                if in_place != (supported && !crate::vm::layout::portable()) {
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
