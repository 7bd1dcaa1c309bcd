//! Watching at the scale of hosts that run one Lua state per service or per scene: 10,000
//! states in one process watch one tree. One OS watcher serves them all: at most 3 threads
//! are added, an idle watching state costs at most 2 KiB, a save is seen at the next poll of
//! every state, and closing the states (with changes pending) gives everything back.
//!
//! Alone in its test binary: it counts the process's threads and allocations.

mod common;
use common::inotify_instances;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use mlua::{Function, Lua, LuaOptions, StdLib, Table};

/// Counts the bytes allocated and not yet freed, Lua's included (mlua allocates through the
/// global allocator).
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const STATES: usize = 10_000;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// A small state with `package` (for `require`) and hotreload in it.
fn state(dir: &Path) -> (Lua, Table) {
    let libs = StdLib::PACKAGE | StdLib::STRING | StdLib::TABLE;
    let lua = Lua::new_with(libs, LuaOptions::default()).unwrap();
    let hr = hotreload::testing::open(&lua).unwrap();
    let package: Table = lua.globals().get("package").unwrap();
    package.set("path", format!("{}/?.lua", dir.display())).unwrap();
    (lua, hr)
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hotreload-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::canonicalize(dir).unwrap()
}

#[test]
fn ten_thousand_states_watch_one_tree() {
    let dir = scratch();
    std::fs::write(dir.join("m.lua"), "return { v = 1, f = function() return 1 end }").unwrap();
    let mut states: Vec<(Lua, Table)> = (0..STATES).map(|_| state(&dir)).collect();
    for (lua, _) in &states {
        lua.load("M = require 'm'").exec().unwrap();
    }
    let (threads_before, instances_before) = (threads(), inotify_instances());
    let before = LIVE.load(Ordering::Relaxed);
    let watchers: Vec<mlua::Value> = states
        .iter()
        .map(|(_, hr)| {
            let watch: Function = hr.get("watch").unwrap();
            watch.call(dir.to_str().unwrap()).unwrap()
        })
        .collect();
    let per_state = (LIVE.load(Ordering::Relaxed) - before) / STATES as isize;
    let added = threads() - threads_before;
    println!("{STATES} watching states: {per_state} bytes each, {added} threads added");
    assert!(per_state <= 2048, "an idle watching state costs {per_state} bytes");
    assert!(added <= 3, "{added} threads added");
    assert!(inotify_instances() <= instances_before + 1, "one OS instance for the process");

    // a save is seen at the next poll of every state
    let start = Instant::now();
    std::fs::write(dir.join("m.lua"), "return { v = 2, f = function() return 2 end }").unwrap();
    let deadline = start + Duration::from_secs(60);
    let mut seen = 0;
    while seen < STATES && Instant::now() < deadline {
        let pending: Function = states[seen].1.get("pending").unwrap();
        if pending.call::<i64>(()).unwrap() > 0 {
            seen += 1;
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    println!("save visible in all {STATES} states after {:?}", start.elapsed());
    assert_eq!(seen, STATES, "states that saw the save");
    for (lua, hr) in &states {
        let poll: Function = hr.get("poll").unwrap();
        assert_eq!(poll.call::<i64>(()).unwrap(), 1);
        assert_eq!(lua.load("return M.v + M.f()").eval::<i64>().unwrap(), 4);
    }

    // states closed with changes pending give back their share: the tree is unwatched
    std::fs::write(dir.join("sub/n.lua"), "return 1").unwrap();
    let pending: Function = states[STATES - 1].1.get("pending").unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while pending.call::<i64>(()).unwrap() == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(pending);
    drop(watchers);
    assert_eq!(hotreload::testing::watched_dirs_under(&dir), 2, "the root and sub");
    states.clear();
    assert_eq!(hotreload::testing::watched_dirs_under(&dir), 0, "all unwatched");
    assert!(threads() <= threads_before + 3);
    std::fs::remove_dir_all(&dir).unwrap();
}
