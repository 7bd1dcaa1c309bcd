//! The plan's anchor table: every object a plan refers to is kept in it, so the collector
//! cannot free it between planning and applying. It sits on the Lua stack while the plan is
//! made, and is then held in the batch's table (a batch of any size fits LuaJIT's stack).
//! While the collector is held since the table was made (see `vm::gc::GcPause`), the table
//! is unmarked, owes no write barrier, and LuaJIT's array part is written in place.

use std::os::raw::c_int;

use mlua::ffi::*;

use crate::vm::access;
use crate::vm::capi::{rawgeti, rawgeti_any};

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
    table: usize,
    /// The collector has not marked the table since it was made: made while the collector is
    /// held (see [`GcPause`](crate::vm::gc::GcPause)), and the hold not lifted since. Such a
    /// table needs no write barrier.
    unmarked: bool,
}

impl Anchors {
    /// The table at the absolute index `idx`; `unmarked` as the field says.
    ///
    /// # Safety
    /// `idx` holds a table, which stays there while this is used; inside `protect`; if
    /// `unmarked`, writes stop before the collector is released ([`Anchors::sealed`]).
    pub unsafe fn at(l: *mut lua_State, idx: c_int, unmarked: bool) -> Anchors {
        // SAFETY: forwarded.
        let table = unsafe { access::table_address(l, idx) }.unwrap_or(0);
        Anchors { idx, held: None, table, unmarked }
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
            if self.table != 0 && access::push_array_slot(l, self.table, n) {
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
            if self.unmarked && self.table != 0 && access::store_array_slot(l, self.table, n, v) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::capi::testing;
    use crate::vm::gc::GcPause;
    use mlua::Lua;

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
                        1 => crate::vm::capi::push_bytes(l, format!("s{n}").as_bytes()),
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
}
