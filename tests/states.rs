//! Several Lua states in one process: each has its own watchers and queue, and closing one
//! with live watchers (and pending changes) neither crashes nor hangs.

mod common;
use common::inotify_instances;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mlua::{Lua, Table};

fn state(path: &str) -> Lua {
    let lua = Lua::new();
    let hr = hotreload::testing::open(&lua).unwrap();
    lua.globals().set("hotreload", hr).unwrap();
    lua.load(format!("package.path = '{path}/?.lua;' .. package.path")).exec().unwrap();
    lua
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hotreload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn pending(lua: &Lua) -> i64 {
    lua.load("return hotreload.pending()").eval().unwrap()
}

/// Once a change is pending, polls until nothing is; the number of modules reloaded in all (a
/// saved file waits for the compile worker before a poll takes it).
fn poll_all(lua: &Lua) -> i64 {
    assert!(wait(|| pending(lua) >= 1), "the save was not seen");
    let mut n = 0;
    assert!(wait(|| {
        n += lua.load("return hotreload.poll()").eval::<i64>().unwrap();
        pending(lua) == 0
    }));
    n
}

fn lua_poll(lua: &Lua) -> i64 {
    lua.load("return hotreload.poll()").eval().unwrap()
}

fn wait(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn two_states_never_see_each_others_changes() {
    let (da, db) = (scratch("a"), scratch("b"));
    let a = state(da.to_str().unwrap());
    let b = state(db.to_str().unwrap());
    a.load(format!("W = assert(hotreload.watch('{}'))", da.display())).exec().unwrap();
    b.load(format!("W = assert(hotreload.watch('{}'))", db.display())).exec().unwrap();

    std::fs::write(da.join("m.lua"), "return { v = 1 }").unwrap();
    a.load("M = require 'm'").exec().unwrap();
    assert!(wait(|| pending(&a) >= 1));
    a.load("hotreload.poll()").exec().unwrap();
    std::fs::write(da.join("m.lua"), "return { v = 2 }").unwrap();
    assert!(wait(|| pending(&a) == 1));
    assert_eq!(pending(&b), 0, "b watches another directory");
    assert_eq!(poll_all(&a), 1);
    assert_eq!(a.load("return M.v").eval::<i64>().unwrap(), 2);
    assert_eq!(lua_poll(&b), 0);
}

#[test]
fn the_same_directory_in_two_states_reloads_each_states_own_modules() {
    let dir = scratch("shared");
    let a = state(dir.to_str().unwrap());
    let b = state(dir.to_str().unwrap());
    for lua in [&a, &b] {
        lua.load(format!("W = assert(hotreload.watch('{}'))", dir.display())).exec().unwrap();
    }
    std::fs::write(dir.join("only_a.lua"), "return { v = 1 }").unwrap();
    a.load("M = require 'only_a'").exec().unwrap();
    assert!(wait(|| pending(&a) >= 1 && pending(&b) >= 1));
    for lua in [&a, &b] {
        lua.load("hotreload.poll()").exec().unwrap();
    }
    std::fs::write(dir.join("only_a.lua"), "return { v = 2 }").unwrap();
    assert!(wait(|| pending(&a) == 1 && pending(&b) == 1));
    assert_eq!(poll_all(&b), 0, "b never required only_a");
    let loaded: Table = b.load("return package.loaded").eval().unwrap();
    assert!(!loaded.contains_key("only_a").unwrap());
    assert_eq!(poll_all(&a), 1);
    assert_eq!(a.load("return M.v").eval::<i64>().unwrap(), 2);
}

/// A module of `n` functions, every body tagged with `tag` (big enough that compiling it
/// takes the worker a while).
fn big_module(n: usize, tag: &str) -> String {
    let mut s = String::from("local M = {}\n");
    for i in 0..n {
        s += &format!("function M.f{i}(x) return x + {i}, '{tag}' end\n");
    }
    s + "return M\n"
}

#[test]
fn closing_a_state_while_its_file_is_being_compiled_ahead() {
    let dir = scratch("inflight");
    std::fs::write(dir.join("big.lua"), big_module(20_000, "v0")).unwrap();
    for round in 1..=5 {
        let lua = state(dir.to_str().unwrap());
        lua.load("M = require 'big'").exec().unwrap();
        lua.load(format!("W = assert(hotreload.watch('{}'))", dir.display())).exec().unwrap();
        std::fs::write(dir.join("big.lua"), big_module(20_000, &format!("v{round}"))).unwrap();
        assert!(wait(|| pending(&lua) >= 1));
        drop(lua); // lua_close with the compile in flight: waits for it, then stops the worker
    }
    // and the worker starts again for the next watch
    let lua = state(dir.to_str().unwrap());
    lua.load("M = require 'big'").exec().unwrap();
    lua.load(format!("W = assert(hotreload.watch('{}'))", dir.display())).exec().unwrap();
    std::fs::write(dir.join("big.lua"), big_module(10, "last")).unwrap();
    assert_eq!(poll_all(&lua), 1);
    let ahead: i64 = lua.load("return hotreload.stats().compiled_ahead").eval().unwrap();
    assert_eq!(ahead, 1);
}

#[test]
fn states_watching_one_tree_share_the_compile_worker() {
    const STATES: usize = 40;
    let dir = scratch("sharedworker");
    std::fs::write(dir.join("s.lua"), "return { v = function() return 1 end }").unwrap();
    let states: Vec<Lua> = (0..STATES)
        .map(|_| {
            let lua = state(dir.to_str().unwrap());
            lua.load("M = require 's'").exec().unwrap();
            lua.load(format!("W = assert(hotreload.watch('{}'))", dir.display())).exec().unwrap();
            lua
        })
        .collect();
    let stats = |lua: &Lua, field: &str| -> i64 {
        lua.load(format!("return hotreload.stats().{field}")).eval().unwrap()
    };
    let before = stats(&states[0], "files_compiled_ahead");
    std::fs::write(dir.join("s.lua"), "return { v = function() return 2 end }").unwrap();
    for lua in &states {
        assert_eq!(poll_all(lua), 1);
        assert_eq!(lua.load("return M.v()").eval::<i64>().unwrap(), 2);
        assert_eq!(stats(lua, "compiled_ahead"), 1, "each state used the one compile");
    }
    // other tests of this binary compile too, in parallel: far fewer than one per state
    let compiled = stats(&states[0], "files_compiled_ahead") - before;
    assert!((1..STATES as i64 / 2).contains(&compiled), "{compiled} compiles");
}

#[test]
fn closing_states_with_live_watchers_and_pending_changes() {
    let dir = scratch("close");
    for round in 0..100 {
        let lua = state(dir.to_str().unwrap());
        lua.load(format!("W = assert(hotreload.watch('{}'))", dir.display())).exec().unwrap();
        std::fs::write(dir.join("x.lua"), format!("return {round}")).unwrap();
        if round % 2 == 0 {
            assert!(wait(|| pending(&lua) >= 1));
        }
        drop(lua); // lua_close: the watcher's __gc stops it
    }
}

/// PUC Lua only: on LuaJIT, whose errors are foreign exceptions, the engine has no
/// `catch_unwind` frame (it would abort on any Lua error inside); a panic aborts there.
#[cfg(not(feature = "luajit"))]
#[test]
fn a_panic_inside_the_engine_becomes_an_error_not_an_unwind_into_lua() {
    let lua = Lua::new();
    let mut result: Option<Result<i32, String>> = None;
    // SAFETY: exec_raw gives a valid state with free stack slots; the closure only panics.
    unsafe {
        lua.exec_raw::<()>((), |l| {
            result = Some(hotreload::testing::protect(l, 0, &mut |_| panic!("engine bug")));
        })
        .unwrap();
    }
    let message = result.unwrap().unwrap_err();
    assert!(message.contains("internal error: engine bug"), "{message}");
    // the state is still usable
    let two: i64 = lua.load("return 1 + 1").eval().unwrap();
    assert_eq!(two, 2);
}

#[test]
fn watching_and_closing_takes_no_more_os_instances() {
    let dir = scratch("instances");
    for i in 0..300 {
        let lua = state(dir.to_str().unwrap());
        // a watch right after a close (of this state's or another's) always works
        let ok: bool = lua
            .load(format!(
                "local w = assert(hotreload.watch('{0}')) w:close()
                 W = assert(hotreload.watch('{0}')) return true",
                dir.display()
            ))
            .eval()
            .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        assert!(ok);
        assert!(inotify_instances() <= 1, "cycle {i}: {} instances", inotify_instances());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
