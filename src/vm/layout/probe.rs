//! The check of an in-place table reader (`lua54/tables` on Lua 5.4, `luajit/tables` on LuaJIT)
//! against `lua_next`, run once when a state opens the module: what both probes have in
//! common. Each VM builds its own array-part table (their array parts differ) and checks its
//! own structure fields; the hash part, the metatable, the in-place push and the cursor's
//! answers are checked here, on the same table for both.

use std::os::raw::{c_int, c_void};

use mlua::ffi as lua;

use crate::vm::capi::{self, lua_State};

/// What a VM's table reader gives the probe.
pub struct Reader {
    /// How many slots a cursor over the table at the index hands over, if the value of each
    /// is the value `lua_rawget` finds for its key (see [`count_slots`]).
    pub slots: unsafe fn(*mut lua_State, c_int) -> Option<usize>,
    /// The VM's look at the table at an address: its parts are where the layout says.
    pub parts_ok: unsafe fn(usize) -> bool,
    pub has_metatable: unsafe fn(usize) -> bool,
    /// The size of the array part of the table at an address, as the cursor reads it.
    pub array_size: unsafe fn(usize) -> usize,
    /// The size of the array part `lua_createtable(l, n, 0)` makes.
    pub created_array_size: fn(c_int) -> usize,
    pub push_table: unsafe fn(*mut lua_State, usize),
    pub pop: unsafe fn(*mut lua_State, usize),
}

/// Counts the slots `next` hands over for the table at `t`: each call pushes the key and the
/// value of the next slot and says true, or pushes nothing and says false at the end. `None`
/// at the first slot whose value is not the (non-nil) value `lua_rawget` finds for its key.
///
/// # Safety
/// `t` absolute; three free stack slots. Leaves the stack as it found it.
pub unsafe fn count_slots(
    l: *mut lua_State,
    t: c_int,
    mut next: impl FnMut(*mut lua_State) -> bool,
) -> Option<usize> {
    // SAFETY: each turn pushes a key and a value and pops them.
    unsafe {
        let mut seen = 0;
        while next(l) {
            lua::lua_pushvalue(l, -2);
            lua::lua_rawget(l, t);
            let same = lua::lua_rawequal(l, -1, -2) != 0 && lua::lua_type(l, -1) != lua::LUA_TNIL;
            lua::lua_pop(l, 3);
            if !same {
                return None;
            }
            seen += 1;
        }
        Some(seen)
    }
}

/// How many entries of the table at `t` (by `lua_next`) have a key or a value for which
/// `wanted` says yes.
///
/// # Safety
/// `t` absolute; two free stack slots, and what `wanted` needs. Leaves the stack as it found
/// it.
pub unsafe fn entries_holding(
    l: *mut lua_State,
    t: c_int,
    wanted: unsafe fn(*mut lua_State, c_int) -> bool,
) -> usize {
    // SAFETY: each turn pops the value `lua_next` pushed; `wanted` leaves the stack as is.
    unsafe {
        let mut n = 0;
        lua::lua_pushnil(l);
        while lua::lua_next(l, t) != 0 {
            if wanted(l, -1) || wanted(l, -2) {
                n += 1;
            }
            lua::lua_pop(l, 1);
        }
        n
    }
}

/// A cursor over the table at `t` hands over exactly the entries `lua_next` gives whose key
/// or value is a table (`expected` of them), with the same values.
///
/// # Safety
/// `t` absolute, a table whose layout the probe checked (or is checking); three free stack
/// slots.
pub unsafe fn agrees(l: *mut lua_State, t: c_int, expected: usize, r: &Reader) -> bool {
    unsafe fn is_table(l: *mut lua_State, idx: c_int) -> bool {
        // SAFETY: a valid index.
        unsafe { lua::lua_type(l, idx) == lua::LUA_TTABLE }
    }
    // SAFETY: only checked table parts are read.
    unsafe {
        (r.parts_ok)(lua::lua_topointer(l, t) as usize)
            && (r.slots)(l, t) == Some(expected)
            && entries_holding(l, t, is_table) == expected
    }
}

/// Builds a table with a hash part of 8 slots holding keys of every kind and a metatable,
/// lets `sized` check its structure (the table's and the metatable's addresses), then checks
/// the reader's metatable test, its push of a table, and its cursor.
///
/// # Safety
/// Inside a protected call, with 12 free stack slots. Leaves its tables on the stack.
pub unsafe fn hash_part(
    l: *mut lua_State,
    r: &Reader,
    sized: impl Fn(usize, usize) -> bool,
) -> bool {
    // SAFETY: every table is on the stack while it is read.
    unsafe {
        lua::lua_createtable(l, 2, 8);
        let h = lua::lua_gettop(l);
        lua::lua_createtable(l, 0, 0);
        let sub = lua::lua_gettop(l);
        lua::lua_pushvalue(l, sub);
        lua::lua_rawseti(l, h, 1); // array part
        lua::lua_pushinteger(l, 7);
        lua::lua_rawseti(l, h, 2);
        lua::lua_pushvalue(l, sub);
        lua::lua_rawseti(l, h, 100); // integer key in the hash part
        lua::lua_pushnumber(l, 1.5);
        lua::lua_pushvalue(l, sub);
        lua::lua_rawset(l, h);
        lua::lua_pushboolean(l, 1);
        lua::lua_pushvalue(l, sub);
        lua::lua_rawset(l, h);
        capi::push_bytes(l, b"name");
        lua::lua_pushvalue(l, sub);
        lua::lua_rawset(l, h);
        lua::lua_pushlightuserdata(l, h as usize as *mut c_void);
        lua::lua_pushvalue(l, sub);
        lua::lua_rawset(l, h);
        lua::lua_pushvalue(l, sub);
        capi::push_bytes(l, b"table key");
        lua::lua_rawset(l, h);
        capi::push_bytes(l, b"plain");
        lua::lua_pushinteger(l, 1);
        lua::lua_rawset(l, h);
        lua::lua_pushvalue(l, sub);
        lua::lua_setmetatable(l, h);
        let (p, q) = (lua::lua_topointer(l, h) as usize, lua::lua_topointer(l, sub) as usize);
        if !sized(p, q) || !(r.has_metatable)(p) || (r.has_metatable)(q) {
            return false;
        }
        let before = lua::lua_gettop(l);
        (r.push_table)(l, p);
        let pushed = lua::lua_rawequal(l, -1, h) != 0 && lua::lua_gettop(l) == before + 1;
        (r.pop)(l, 1);
        // the plain one (and the integer 7) is not handed over
        pushed && lua::lua_gettop(l) == before && agrees(l, h, 7, r)
    }
}

/// Array part sizes the probe builds: every size up to 17, and powers of two and their
/// neighbours (where `alimit` and the real size part ways).
const ARRAY_SIZES: [c_int; 27] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128,
    129,
];

/// The cursor agrees with `lua_next` on tables of every array size: full; with their upper
/// half cleared and `#` taken (which moves the array limit on Lua 5.4) and the last slot set
/// again; grown one key at a time (rehashed); and with border keys (`n + 1`, `n + 2`, `0`,
/// `-1`) and plain values of every kind in the hash part. Where the size of the array part is
/// known (made by `lua_createtable`, and no key added since), the cursor reads exactly that many
/// slots: reading past the end could find nothing it hands over, and pass.
///
/// # Safety
/// Inside a protected call, with 8 free stack slots. Leaves the stack as it found it.
pub unsafe fn shapes(l: *mut lua_State, r: &Reader) -> bool {
    unsafe fn is_table(l: *mut lua_State, idx: c_int) -> bool {
        // SAFETY: a valid index.
        unsafe { lua::lua_type(l, idx) == lua::LUA_TTABLE }
    }
    // SAFETY: each table is on the stack while it is built and read, then popped.
    unsafe {
        let top = lua::lua_gettop(l);
        lua::lua_createtable(l, 0, 0);
        let sub = top + 1;
        let check = |l, created: Option<c_int>| {
            let t = lua::lua_gettop(l);
            let size = (r.array_size)(lua::lua_topointer(l, t) as usize);
            let ok = agrees(l, t, entries_holding(l, t, is_table), r)
                && created.is_none_or(|n| size == (r.created_array_size)(n));
            lua::lua_settop(l, t - 1);
            ok
        };
        let fill = |l, from: c_int, to: c_int| {
            for i in from..=to {
                lua::lua_pushvalue(l, sub);
                lua::lua_rawseti(l, -2, lua::lua_Integer::from(i));
            }
        };
        let mut ok = true;
        for n in ARRAY_SIZES {
            lua::lua_createtable(l, n, 0);
            fill(l, 1, n);
            ok &= check(l, Some(n));
            lua::lua_createtable(l, n, 0);
            fill(l, 1, n);
            for i in n / 2 + 1..=n {
                lua::lua_pushnil(l);
                lua::lua_rawseti(l, -2, lua::lua_Integer::from(i));
            }
            lua::lua_rawlen(l, -1);
            fill(l, n.max(1), n);
            ok &= check(l, Some(n));
            lua::lua_createtable(l, 0, 0);
            fill(l, 1, n);
            ok &= check(l, None);
            lua::lua_createtable(l, n, 12);
            fill(l, 1, n);
            for k in [n + 1, n + 2, 0, -1] {
                lua::lua_pushvalue(l, sub);
                lua::lua_rawseti(l, -2, lua::lua_Integer::from(k));
            }
            capi::push_bytes(l, b"plain");
            capi::push_bytes(l, b"a string value");
            lua::lua_rawset(l, -3);
            lua::lua_pushnumber(l, 0.25);
            lua::lua_pushboolean(l, 1);
            lua::lua_rawset(l, -3);
            lua::lua_pushboolean(l, 0);
            lua::lua_pushnumber(l, 2.5);
            lua::lua_rawset(l, -3);
            lua::lua_pushlightuserdata(l, sub as usize as *mut c_void);
            lua::lua_pushinteger(l, 7);
            lua::lua_rawset(l, -3);
            ok &= check(l, None); // (LuaJIT may rehash it, growing the array part)
        }
        lua::lua_settop(l, top);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::Lua;

    use crate::vm::layout::tables;

    /// The VM's table layout passes its probe, once what it relies on passed its own (on
    /// LuaJIT, `luajit/slots`'s stack and values), whatever `HOTRELOAD_PORTABLE_WALK` says.
    unsafe fn layout_probed(l: *mut lua_State) -> bool {
        // SAFETY: forwarded; each probe leaves the stack as it found it.
        unsafe {
            #[cfg(feature = "luajit")]
            if crate::vm::layout::raw::probe(l).is_none() {
                return false;
            }
            tables::probe(l)
        }
    }

    /// Whether the value at `idx` is an object the walk must see, by the API.
    unsafe fn is_object(l: *mut lua_State, idx: c_int) -> bool {
        // SAFETY: a valid index; the upvalue probe pushes at most one value and pops it.
        unsafe {
            match lua::lua_type(l, idx) {
                lua::LUA_TTABLE | lua::LUA_TUSERDATA | lua::LUA_TTHREAD => true,
                lua::LUA_TFUNCTION if lua::lua_iscfunction(l, idx) == 0 => true,
                // every LuaJIT function is an object
                lua::LUA_TFUNCTION if cfg!(feature = "luajit") => true,
                // a C closure has upvalues, a light C function none
                lua::LUA_TFUNCTION => {
                    let has = !lua::lua_getupvalue(l, idx, 1).is_null();
                    if has {
                        lua::lua_pop(l, 1);
                    }
                    has
                }
                _ => false,
            }
        }
    }

    /// The cursor over the table at `t` gives the entries `lua_next` gives that hold an
    /// object on either side, each once, with its value.
    unsafe fn check(l: *mut lua_State, t: c_int) -> Result<(), String> {
        // SAFETY: both counts leave the stack as they found it.
        unsafe {
            let expected = entries_holding(l, t, is_object);
            match (tables::READER.slots)(l, t) {
                Some(seen) if seen == expected => Ok(()),
                Some(seen) => Err(format!("cursor gave {seen} entries, lua_next {expected}")),
                None => Err("a cursor's value is not the table's".into()),
            }
        }
    }

    #[test]
    fn the_layout_probe_accepts_exactly_the_layouts_it_knows() {
        let lua = Lua::new();
        let supported = capi::testing::supported_layout();
        // SAFETY: the probe leaves the stack as it found it; one boolean is returned.
        let ok: bool = unsafe {
            lua.exec_raw((), |l| {
                let ok = layout_probed(l);
                lua::lua_pushboolean(l, ok as c_int);
            })
        }
        .unwrap();
        assert_eq!(
            ok,
            supported,
            "the layout probe on {} (known layout: {supported})",
            capi::FLAVOR
        );
    }

    #[test]
    fn cursors_agree_with_lua_next_on_random_tables() {
        let lua = Lua::new();
        let tables: mlua::Table = lua
            .load(
                r#"
                math.randomseed(7)
                local objects = { {}, function() end, coroutine.create(print), io.stdout,
                  print, ("x"):gmatch("."), "s", 1.5, true, 42 }
                local function any() return objects[math.random(#objects)] end
                local out = {}
                for _ = 1, 400 do
                  local t = {}
                  for i = 1, math.random(0, 80) do
                    local r, k = math.random()
                    if r < 0.45 then k = i
                    elseif r < 0.5 then k = i - 1
                    elseif r < 0.6 then k = math.random(1, 300)
                    elseif r < 0.7 then k = "k" .. i
                    elseif r < 0.8 then k = any()
                    elseif r < 0.9 then k = i + 0.5
                    else k = {} end
                    t[k] = any()
                  end
                  for k in pairs(t) do
                    if math.random() < 0.2 then t[k] = nil end
                  end
                  if math.random() < 0.5 then local _ = #t end
                  out[#out + 1] = t
                end
                -- `#` lowers the array limit below an entry still in the array part
                local a = {}
                for i = 1, 16 do a[i] = {} end
                for i = 10, 16 do a[i] = nil end
                a[11] = {}
                local _ = #a
                out[#out + 1] = a
                out[#out + 1] = setmetatable({ {} }, { __mode = "k" })
                return out
                "#,
            )
            .eval()
            .unwrap();
        let n = tables.raw_len() as lua::lua_Integer;
        if !capi::testing::supported_layout() {
            return; // no cursor reads this VM's tables (the probe refuses it, tested above)
        }
        // SAFETY: one table on the stack at a time.
        unsafe {
            capi::testing::assert_raw(&lua, tables, |l, failures| {
                if !layout_probed(l) {
                    failures.push_str("the layout probe failed\n");
                    return;
                }
                for i in 1..=n {
                    lua::lua_rawgeti(l, 1, i);
                    if let Err(e) = check(l, lua::lua_gettop(l)) {
                        failures.push_str(&format!("table {i}: {e}\n"));
                    }
                    lua::lua_pop(l, 1);
                }
            });
        }
    }
}
