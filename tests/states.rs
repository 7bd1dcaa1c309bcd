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
    let (n, v): (i64, i64) = a.load("return hotreload.poll(), M.v").eval().unwrap();
    assert_eq!((n, v), (1, 2));
    let n: i64 = b.load("return hotreload.poll()").eval().unwrap();
    assert_eq!(n, 0);
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
    let n: i64 = b.load("return hotreload.poll()").eval().unwrap();
    assert_eq!(n, 0, "b never required only_a");
    let loaded: Table = b.load("return package.loaded").eval().unwrap();
    assert!(!loaded.contains_key("only_a").unwrap());
    let (n, v): (i64, i64) = a.load("return hotreload.poll(), M.v").eval().unwrap();
    assert_eq!((n, v), (1, 2));
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
