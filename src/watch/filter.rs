//! Which files and directories a watch counts: file names by the `pattern` glob (minus
//! editors' lock, backup and temporary files), directories by the `ignore` globs on their
//! names (`.git`, `.hg`, `.svn` and `node_modules` always). Pure.

// Runs on notify's thread, where a panic would end the watcher silently.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::path::Path;

/// Directory names no watch enters: version control data and installed packages, which
/// hold no module a program loads from its source tree and can hold tens of thousands of
/// directories.
pub const ALWAYS_IGNORED: &[&str] = &[".git", ".hg", ".svn", "node_modules"];

/// What a watch counts.
#[derive(Clone, Debug)]
pub struct Filter {
    /// Glob on file names (`*` and `?`).
    pub pattern: String,
    /// Globs on directory names, the defaults first.
    pub ignore: Vec<String>,
}

impl Filter {
    /// A filter of `pattern`, ignoring `extra` directory names on top of the defaults.
    pub fn new(pattern: &str, extra: &[String]) -> Filter {
        let mut ignore: Vec<String> = ALWAYS_IGNORED.iter().map(|s| (*s).to_owned()).collect();
        for glob in extra {
            if !ignore.contains(glob) {
                ignore.push(glob.clone());
            }
        }
        Filter { pattern: pattern.to_owned(), ignore }
    }

    /// Whether the file at `path` counts, by its name.
    pub fn wants_file(&self, path: &Path) -> bool {
        path.file_name().and_then(|n| n.to_str()).is_some_and(|name| wanted(name, &self.pattern))
    }

    /// Whether a directory named `name` is left out, with everything under it.
    pub fn ignores_dir(&self, name: &str) -> bool {
        self.ignore.iter().any(|g| glob(g.as_bytes(), name.as_bytes()))
    }

    /// Whether `path`, under `root`, lies in a directory this filter leaves out (the root
    /// itself never counts as one).
    pub fn ignores_under(&self, root: &Path, path: &Path) -> bool {
        let Ok(rest) = path.strip_prefix(root) else { return true };
        let mut dirs = rest.components();
        dirs.next_back(); // the file itself
        dirs.any(|c| c.as_os_str().to_str().is_some_and(|name| self.ignores_dir(name)))
    }
}

/// Whether a file name counts: it matches the pattern and is not an editor's lock, backup or
/// temporary file (`.#x.lua` from Emacs, `x.lua~` backups, `.x.lua.swp`, `x.lua___jb_tmp___`).
pub fn wanted(name: &str, pattern: &str) -> bool {
    !name.starts_with(".#") && !name.ends_with('~') && glob(pattern.as_bytes(), name.as_bytes())
}

/// `*` and `?` glob matching of a whole name.
pub fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == name.get(n) => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern.get(p..).is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert!(wanted("player.lua", "*.lua"));
        assert!(wanted("init.lua", "*.lua"));
        assert!(!wanted("player.lua~", "*.lua"), "backup");
        assert!(!wanted(".#player.lua", "*.lua"), "emacs lock");
        assert!(!wanted(".player.lua.swp", "*.lua"), "vim swap");
        assert!(!wanted("player.lua___jb_tmp___", "*.lua"), "jetbrains temp");
        assert!(!wanted("4913", "*.lua"), "vim's probe file");
        assert!(!wanted("notes.txt", "*.lua"));
        assert!(wanted("a.moon", "*.moon"));
        assert!(wanted("level_1.lua", "level_?.lua"));
        assert!(wanted("x.lua", "*"));
        assert!(!wanted("x.luac", "*.lua"));
        assert!(wanted("a.b.c.lua", "*.*.lua"));
    }

    #[test]
    fn directories_left_out() {
        let f = Filter::new("*.lua", &["build*".to_owned(), ".git".to_owned()]);
        assert_eq!(f.ignore.iter().filter(|g| *g == ".git").count(), 1, "no duplicate");
        for name in [".git", "node_modules", ".hg", ".svn", "build", "build-debug"] {
            assert!(f.ignores_dir(name), "{name}");
        }
        for name in ["src", "git", "modules", "rebuild"] {
            assert!(!f.ignores_dir(name), "{name}");
        }
        let root = Path::new("/p/.git"); // a root named like an ignored directory is watched
        assert!(!f.ignores_under(root, Path::new("/p/.git/a.lua")));
        assert!(f.ignores_under(root, Path::new("/p/.git/node_modules/x/a.lua")));
        assert!(f.ignores_under(Path::new("/p"), Path::new("/p/src/build/a.lua")));
        assert!(!f.ignores_under(Path::new("/p"), Path::new("/p/src/build.lua")), "a file");
        assert!(f.ignores_under(Path::new("/p"), Path::new("/q/a.lua")), "outside the root");
    }
}
