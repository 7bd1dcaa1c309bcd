//! A private `lua_State` of the host's own Lua library, opened by the compile worker
//! (`watch::compile`) to compile saved files off the Lua thread. It never sees the program's
//! states: each job opens one with `luaL_newstate`, compiles, dumps and closes it. Also what
//! the searchers of a fresh state are, so that the loader can tell the standard file searcher
//! from any other (`std_file_searcher`).

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::OnceLock;

use mlua::ffi as lua;

use super::capi::{self, lua_State};

/// A saved file compiled ahead: what `luaL_loadfilex` would have made of `hash`'s bytes
/// under `chunkname`.
#[derive(Debug)]
pub(crate) struct Compiled {
    /// The file, canonical.
    pub(crate) file: PathBuf,
    /// `@` and the file name `require`'s searcher spelt it with (`record_file`'s hint), or
    /// the watched path.
    pub(crate) chunkname: Box<[u8]>,
    /// `watch::source::content_hash` of the bytes compiled.
    pub(crate) hash: u64,
    /// `string.dump` of the chunk with its debug information, or the compiler's message.
    pub(crate) chunk: Result<Vec<u8>, String>,
}

/// The bytes `luaL_loadfilex` hands the compiler for a file holding `bytes`: Lua 5.x skips a
/// UTF-8 byte order mark and turns a first line starting with `#` into an empty line;
/// LuaJIT's lexer does both itself. `None` for a precompiled file and for a partial mark
/// (Lua versions differ on what they keep of it): those are left to the Lua thread.
pub(crate) fn file_text(bytes: &[u8]) -> Option<Cow<'_, [u8]>> {
    const ESC: u8 = 0x1b;
    if cfg!(feature = "luajit") {
        return (bytes.first() != Some(&ESC)).then_some(Cow::Borrowed(bytes));
    }
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.first() == Some(&0xEF) && text.len() == bytes.len() {
        return None;
    }
    if text.first() == Some(&b'#') {
        let after = text.iter().position(|&c| c == b'\n').map_or(&[][..], |i| &text[i + 1..]);
        if after.first() == Some(&ESC) {
            return None;
        }
        let mut kept = Vec::with_capacity(after.len() + 1);
        kept.push(b'\n');
        kept.extend_from_slice(after);
        return Some(Cow::Owned(kept));
    }
    (text.first() != Some(&ESC)).then_some(Cow::Borrowed(text))
}

/// A state of its own, closed when dropped.
struct Scratch(*mut lua_State);

impl Scratch {
    fn open() -> Option<Scratch> {
        // SAFETY: luaL_newstate has no precondition; NULL means no memory (or a LuaJIT that
        // cannot map another arena).
        let l = unsafe { lua::luaL_newstate() };
        (!l.is_null()).then_some(Scratch(l))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: the state was opened by `open`, is used by this thread only, and nothing
        // refers to it once it is closed.
        unsafe { lua::lua_close(self.0) };
    }
}

/// Compiles `text` as `luaL_loadfilex` would under `chunkname` (without its checks of the
/// first bytes, see `file_text`) and dumps the chunk with its debug information. `None` if
/// no state could be opened or it ran out of memory.
pub(crate) fn compile(text: &[u8], chunkname: &[u8]) -> Option<Result<Vec<u8>, String>> {
    let scratch = Scratch::open()?;
    let name = std::ffi::CString::new(chunkname).ok()?;
    let mut out = None;
    // SAFETY: a fresh state with an empty stack; the closure owns nothing a Lua error could
    // skip the drop of except `dump`'s buffer, which `protect` documents (leaked, not used).
    let done = unsafe {
        capi::protect(scratch.0, 0, &mut |l| {
            let status = lua::luaL_loadbufferx(
                l,
                text.as_ptr().cast(),
                text.len(),
                name.as_ptr(),
                c"t".as_ptr(),
            );
            out = Some(if status == lua::LUA_OK {
                capi::dump(l, -1).ok_or_else(String::new)
            } else if status == lua::LUA_ERRSYNTAX {
                Err(capi::describe(l, -1))
            } else {
                return 0; // out of memory: the Lua thread compiles it
            });
            0
        })
    };
    done.ok()?;
    match out? {
        Err(e) if e.is_empty() => None,
        r => Some(r),
    }
}

/// The address of the host library's standard Lua file searcher (`searchers[2]`, LuaJIT's
/// `loaders[2]`), read once from a fresh state's `package` library. `None` if no state could
/// be opened.
pub(crate) fn std_file_searcher() -> Option<usize> {
    static SEARCHER: OnceLock<Option<usize>> = OnceLock::new();
    *SEARCHER.get_or_init(|| {
        let scratch = Scratch::open()?;
        let mut found = None;
        // SAFETY: a fresh state; `luaopen_package` runs as a called C function (LuaJIT's
        // sets its environment), inside the protected call.
        let done = unsafe {
            capi::protect(scratch.0, 0, &mut |l| {
                lua::lua_pushcfunction(l, lua::luaopen_package);
                lua::lua_call(l, 0, 1);
                for field in [c"searchers", c"loaders"] {
                    if lua::lua_getfield(l, -1, field.as_ptr()) == lua::LUA_TTABLE {
                        lua::lua_rawgeti(l, -1, 2);
                        found = lua::lua_tocfunction(l, -1).map(|f| f as usize);
                        return 0;
                    }
                    lua::lua_pop(l, 1);
                }
                0
            })
        };
        done.ok().and(found)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_text_is_what_loadfile_compiles() {
        assert_eq!(file_text(b"return 1").as_deref(), Some(&b"return 1"[..]));
        assert_eq!(file_text(b"\x1bLua").as_deref(), None);
        if cfg!(feature = "luajit") {
            assert_eq!(
                file_text(b"#!/bin/lua\nreturn 1").as_deref(),
                Some(&b"#!/bin/lua\nreturn 1"[..])
            );
        } else {
            assert_eq!(file_text(b"\xEF\xBB\xBFreturn 1").as_deref(), Some(&b"return 1"[..]));
            assert_eq!(file_text(b"#!/bin/lua\nreturn 1").as_deref(), Some(&b"\nreturn 1"[..]));
            assert_eq!(file_text(b"\xEF\xBB\xBF#x").as_deref(), Some(&b"\n"[..]));
            assert_eq!(file_text(b"\xEFreturn").as_deref(), None);
            assert_eq!(file_text(b"#x\n\x1bLua").as_deref(), None);
        }
    }

    #[test]
    fn compiles_in_a_state_of_its_own() {
        let chunk = compile(b"local x = 1\nreturn x", b"@m.lua").unwrap().unwrap();
        assert_eq!(chunk.first(), Some(&0x1b));
        let err = compile(b"return +", b"@dir/m.lua").unwrap().unwrap_err();
        assert!(err.starts_with("dir/m.lua:1:"), "{err}");
        assert!(std_file_searcher().is_some());
    }
}
