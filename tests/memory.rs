//! Reloads that run out of memory part way (emergency collections during the walk, a failed
//! allocation anywhere in the engine) answer with an error or succeed and never crash; the
//! next reload works. After a success every reference runs the new code; after a failure
//! part way through the walk, references it had not reached yet keep the version before
//! (README, Limitations), so only the module itself is checked then.

use mlua::Lua;

const SOURCE: &str = "local M = {}
function M.f() return 'VERSION' end
function M.make() return function() return 'made VERSION' end end
return M
";

const HEAP: &str = r#"
M = require 'mem'
keep, weak = {}, setmetatable({}, { __mode = 'v' })
for i = 1, 200 do
  local t = { f = M.f, g = M.make(), { M.f } }
  for j = 1, 5 do t[j] = M.f end
  local _ = #t
  keep[i] = t
  weak[i] = { M.f, { M.f } } -- only weakly held: emergency collections clear it
end
"#;

const CHECK: &str = r#"
local everywhere = ...
local M = assert(hotreload.reload('mem'))
assert(M.f() == 'v3' and M.make()() == 'made v3', 'module')
for i = 1, everywhere and 200 or 0 do
  local t = keep[i]
  assert(t.f() == 'v3' and t[1]() == 'v3' and t[5]() == 'v3', 'stale reference')
  assert(t.g() == 'made v3', 'factory closure')
end
return true
"#;

#[test]
fn reloads_short_of_memory_fail_cleanly_and_the_next_one_works() {
    // (a LuaJIT without GC64 on x64 only runs with its own allocator: no limit can be set)
    if let Err(mlua::Error::MemoryControlNotAvailable) = Lua::new().set_memory_limit(1 << 30) {
        eprintln!("skipped: this Lua cannot limit its memory");
        return;
    }
    let dir = std::env::temp_dir().join(format!("hotreload-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mem.lua");
    let (mut failed, mut succeeded) = (0, 0);
    // from far too little memory for the new version to enough for the whole reload
    for extra in (0..120_000).step_by(2_000) {
        std::fs::write(&file, SOURCE.replace("VERSION", "v1")).unwrap();
        let lua = Lua::new();
        let hr = hotreload::testing::open(&lua).unwrap();
        lua.globals().set("hotreload", hr).unwrap();
        let path = format!("package.path = '{}/?.lua;' .. package.path", dir.display());
        lua.load(path).exec().unwrap();
        lua.load(HEAP).exec().unwrap();
        std::fs::write(&file, SOURCE.replace("VERSION", "v2")).unwrap();
        lua.gc_collect().unwrap();
        lua.set_memory_limit(lua.used_memory() + extra).unwrap();
        let ok: bool = lua
            .load("local ok, m = pcall(hotreload.reload, 'mem') return ok and m ~= nil")
            .eval()
            .unwrap_or(false);
        lua.set_memory_limit(0).unwrap();
        if ok {
            succeeded += 1;
        } else {
            failed += 1;
        }
        std::fs::write(&file, SOURCE.replace("VERSION", "v3")).unwrap();
        let after: mlua::Result<bool> = lua.load(CHECK).call(ok);
        assert!(after.is_ok(), "after a reload with {extra} bytes to spare (ok: {ok}): {after:?}");
    }
    assert!(
        failed > 0 && succeeded > 0,
        "{failed} failed, {succeeded} succeeded: widen the limits"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
