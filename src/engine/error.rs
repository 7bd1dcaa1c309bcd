//! The errors a reload answers with. All but `Internal` are expected failures, returned to Lua
//! as `nil, message`; `Internal` (a bug, or memory exhaustion) is raised.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No searcher found the module.
    NotFound,
    /// The new version failed to compile or to run; the message is Lua's own.
    Load,
    /// The new version cannot be merged into the running one.
    Merge,
    /// A C module: there is no Lua code to merge.
    Native,
    /// The module is already being reloaded: code that reload runs (its top level, a hook, a
    /// listener, a finalizer) asked for it again; the detail says which step was running.
    Busy,
    /// A `before_reload` listener or the module's `__unload` returned `false`.
    Vetoed,
    /// The module is pinned (`hotreload.pin`): refused before loading; the detail is why.
    Pinned,
    /// A hook or listener raised; the detail says which and Lua's message.
    Hook,
    /// In a transaction, another module failed, so this one was not reloaded either.
    Aborted,
    /// The batch as a whole does not fit the Lua stack; the detail says why, for all.
    TooMany,
    /// A bug in hotreload or a memory error; the module is left as it was when possible.
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub module: String,
    pub detail: String,
}

impl Error {
    pub fn new(kind: ErrorKind, module: &[u8], detail: impl Into<String>) -> Error {
        Error { kind, module: String::from_utf8_lossy(module).into_owned(), detail: detail.into() }
    }

    /// Whether this error is raised rather than returned as `nil, message`.
    pub fn raises(&self) -> bool {
        self.kind == ErrorKind::Internal
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = match self.kind {
            ErrorKind::Native => "it is a C module; only Lua code can be reloaded",
            ErrorKind::Busy => {
                return write!(
                    f,
                    "hotreload: cannot reload '{}': it is already being reloaded (the call \
                     came from inside that reload, {})",
                    self.module, self.detail
                );
            }
            ErrorKind::Aborted => "another module of its transaction failed",
            ErrorKind::TooMany => return write!(f, "hotreload: {}", self.detail),
            _ => &self.detail,
        };
        write!(f, "hotreload: cannot reload '{}': {}", self.module, detail)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_module_and_keep_lua_text() {
        let e = Error::new(ErrorKind::Load, b"game.player", "./game/player.lua:3: '=' expected");
        assert_eq!(
            e.to_string(),
            "hotreload: cannot reload 'game.player': ./game/player.lua:3: '=' expected"
        );
        assert!(!e.raises());
        assert!(Error::new(ErrorKind::Native, b"lfs", "").to_string().contains("C module"));
        assert!(Error::new(ErrorKind::Internal, b"m", "boom").raises());
    }
}
