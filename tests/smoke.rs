use mlua::Lua;

#[test]
fn smoke() {
    let lua = Lua::new();
    let hr = hotreload::hotreload(&lua).unwrap();
    lua.globals().set("hotreload", hr).unwrap();
    let dir = std::env::temp_dir().join(format!("hr-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("m.lua"),
        "local M = {} local n = 0 function M.inc() n = n + 1 return n end M.x = 1 return M",
    )
    .unwrap();
    lua.load(format!("package.path = '{}/?.lua;' .. package.path", dir.display())).exec().unwrap();
    lua.load("M = require 'm'; M.inc(); M.inc(); M.x = 5").exec().unwrap();
    std::fs::write(dir.join("m.lua"), "local M = {} local n = 0 function M.inc() n = n + 10 return n end M.x = 1 M.y = 2 return M").unwrap();
    let r: mlua::MultiValue = lua.load("return hotreload.reload('m')").call(()).unwrap();
    println!("{:?}", r);
    let (same, inc, x, y): (bool, i64, i64, i64) =
        lua.load("local m = require 'm'; return m == M, M.inc(), M.x, M.y").eval().unwrap();
    assert!(same);
    assert_eq!((inc, x, y), (12, 5, 2));
}
