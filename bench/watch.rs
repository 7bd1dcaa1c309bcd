//! Watching figures, from Rust (many Lua states in one process need a host of their own):
//! `cargo bench --bench watch` prints `make bench` table rows.
//!
//! - A save seen by every one of 10,000 states watching the same tree (each state's
//!   `pending()` above zero) ÷ the same seen by one state.
//! - `watch` of a generated tree of 10,000 directories ÷ listing that tree with `read_dir`.
//!
//! Each figure and its baseline are timed in turn, round by round; the ratio is the median
//! of the per-round ratios (as `bench/lib.lua` does).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mlua::{Function, Lua, LuaOptions, StdLib, Table};

const STATES: usize = 10_000;
const ROUNDS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hotreload-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::canonicalize(dir).unwrap()
}

fn state() -> (Lua, Table) {
    let lua = Lua::new_with(StdLib::PACKAGE | StdLib::STRING, LuaOptions::default()).unwrap();
    let hr = hotreload::testing::open(&lua).unwrap();
    (lua, hr)
}

/// Seconds from a save in `dir` until every state's `pending()` is above zero; then polls
/// them all (the file maps to no loaded module: nothing is reloaded).
fn save_to_visible(dir: &Path, pending: &[Function], polls: &[Function], round: usize) -> f64 {
    let start = Instant::now();
    std::fs::write(dir.join("m.lua"), format!("return {round}")).unwrap();
    for p in pending {
        while p.call::<i64>(()).unwrap() == 0 {
            assert!(start.elapsed() < Duration::from_secs(60), "a state never saw the save");
            std::hint::spin_loop();
        }
    }
    let t = start.elapsed().as_secs_f64();
    for p in polls {
        p.call::<i64>(()).unwrap();
    }
    t
}

fn fan_out() {
    let (one, many) = (scratch("one"), scratch("many"));
    let watch_all = |dir: &Path, n: usize| {
        let states: Vec<(Lua, Table)> = (0..n).map(|_| state()).collect();
        let mut pending = Vec::new();
        let mut polls = Vec::new();
        for (_, hr) in &states {
            let watch: Function = hr.get("watch").unwrap();
            let _: mlua::Value = watch.call(dir.to_str().unwrap()).unwrap();
            pending.push(hr.get::<Function>("pending").unwrap());
            polls.push(hr.get::<Function>("poll").unwrap());
        }
        (states, pending, polls)
    };
    let (_a, p1, q1) = watch_all(&one, 1);
    let (_b, pn, qn) = watch_all(&many, STATES);
    let (mut base, mut value, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let b = save_to_visible(&one, &p1, &q1, r);
        let v = save_to_visible(&many, &pn, &qn, r);
        base.push(b);
        value.push(v);
        ratio.push(v / b);
    }
    println!(
        "| rust (lua54) | save visible in all of {STATES} watching states vs in 1 state | {:.2} ms | {:.3} ms | {:.0}× |  |",
        median(value) * 1e3,
        median(base) * 1e3,
        median(ratio)
    );
    let _ = std::fs::remove_dir_all(&one);
    let _ = std::fs::remove_dir_all(&many);
}

/// A tree of 10,101 directories (100 of 10 of 9, and theirs), a Lua file in each leaf.
fn big_tree() -> PathBuf {
    let root = scratch("tree");
    for a in 0..100 {
        for b in 0..10 {
            for c in 0..9 {
                let d = root.join(format!("a{a}/b{b}/c{c}"));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join("m.lua"), "return 1").unwrap();
            }
        }
    }
    root
}

fn list(dir: &Path) -> usize {
    let mut n = 1;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            n += list(&e.path());
        }
    }
    n
}

fn big_watch() {
    let root = big_tree();
    let dirs = list(&root);
    let (lua, hr) = state();
    lua.globals().set("hotreload", hr).unwrap();
    let open: Function =
        lua.load("return function(d) W = assert(hotreload.watch(d)) end").eval().unwrap();
    let close: Function = lua.load("return function() W:close() W = nil end").eval().unwrap();
    let (mut base, mut value, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        assert_eq!(list(&root), dirs);
        let b = t.elapsed().as_secs_f64();
        let t = Instant::now();
        open.call::<()>(root.to_str().unwrap()).unwrap();
        let v = t.elapsed().as_secs_f64();
        close.call::<()>(()).unwrap();
        base.push(b);
        value.push(v);
        ratio.push(v / b);
    }
    println!(
        "| rust (lua54) | watch of a tree of {dirs} directories vs listing it | {:.1} ms | {:.1} ms | {:.1}× |  |",
        median(value) * 1e3,
        median(base) * 1e3,
        median(ratio)
    );
    let _ = std::fs::remove_dir_all(&root);
}

fn main() {
    fan_out();
    big_watch();
}
