//! Walking a watched tree: the directories to watch (not the ignored ones, not through
//! symbolic links, so a link cycle cannot loop), the ones that cannot be read (skipped and
//! reported, never a reason to fail the whole watch), and the wanted files in them. The
//! file system is passed in, so the rules are tested on made-up trees.

// Runs on the watch thread, where a panic would end watching silently.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::io;
use std::path::{Path, PathBuf};

use super::filter::Filter;

/// An entry of a directory listing.
#[derive(Debug)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    /// A symbolic link, a socket, ...: not followed, not watched.
    Other,
}

/// Lists a directory (the real file system: [`list_dir`]).
pub type Lister<'a> = &'a dyn Fn(&Path) -> io::Result<Vec<Entry>>;

/// The real file system's listing of `dir`.
pub fn list_dir(dir: &Path) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let kind = match entry.file_type() {
            Ok(t) if t.is_dir() => Kind::Dir,
            Ok(t) if t.is_file() => Kind::File,
            _ => Kind::Other,
        };
        out.push(Entry { path: entry.path(), kind });
    }
    Ok(out)
}

/// Whether `path` is a directory itself, not a link to one: links are not followed, so a
/// directory is watched under its own path only, and a link moved in or out of the tree
/// never stands for the directory it points to.
pub fn is_dir_itself(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// A walk's result.
#[derive(Debug, Default)]
pub struct Walked {
    /// Every directory to watch, `root` first.
    pub dirs: Vec<PathBuf>,
    /// Directories that could not be listed, and why.
    pub skipped: Vec<(PathBuf, io::Error)>,
    /// The wanted files met.
    pub files: Vec<PathBuf>,
}

/// Walks the tree under `root` (itself included, never ignored): every directory the filter
/// does not leave out, and the wanted files in them.
pub fn walk(root: &Path, filter: &Filter, list: Lister) -> Walked {
    let mut out = Walked::default();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = match list(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                out.skipped.push((dir, e));
                continue;
            }
        };
        sort(entries, filter, &mut pending, &mut out.files);
        out.dirs.push(dir);
    }
    out
}

/// Sorts a directory's listing into the subdirectories the filter does not leave out and
/// the wanted files.
pub fn sort(
    entries: Vec<Entry>,
    filter: &Filter,
    dirs: &mut Vec<PathBuf>,
    files: &mut Vec<PathBuf>,
) {
    for e in entries {
        match e.kind {
            Kind::Dir => {
                let name = e.path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if !filter.ignores_dir(name) {
                    dirs.push(e.path);
                }
            }
            Kind::File if filter.wants_file(&e.path) => files.push(e.path),
            _ => {}
        }
    }
}

/// The message for a watched root that was removed or renamed.
pub fn lost_message(root: &Path) -> String {
    format!(
        "hotreload: watch '{}': the directory was removed or renamed; its files are watched \
         again once it exists again",
        root.display()
    )
}

/// One message for the directories a walk of `root` could not read: how many, and the
/// first few, so that `watch("/")` reports `/proc` in a line, not in thousands.
pub fn skipped_message(root: &Path, skipped: &[(PathBuf, io::Error)]) -> Option<String> {
    const SHOWN: usize = 3;
    let (first, e) = skipped.first()?;
    let mut m = if skipped.len() == 1 {
        format!(
            "hotreload: watch '{}': cannot read '{}' ({e}): not watched",
            root.display(),
            first.display()
        )
    } else {
        let names: Vec<String> =
            skipped.iter().take(SHOWN).map(|(p, _)| format!("'{}'", p.display())).collect();
        format!(
            "hotreload: watch '{}': cannot read {} directories ({e}), not watched: {}",
            root.display(),
            skipped.len(),
            names.join(", ")
        )
    };
    if skipped.len() > SHOWN {
        m.push_str(", ...");
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A directory of a made-up tree and its entries; `None`: cannot be read.
    type FakeDir<'a> = (&'a str, Option<&'a [(&'a str, Kind)]>);

    /// A made-up tree.
    fn fake(tree: &[FakeDir]) -> impl Fn(&Path) -> io::Result<Vec<Entry>> {
        let map: HashMap<PathBuf, Option<Vec<(PathBuf, Kind)>>> = tree
            .iter()
            .map(|(d, entries)| {
                let entries = entries.map(|es| {
                    es.iter().map(|(n, k)| (Path::new(d).join(n), *k)).collect::<Vec<_>>()
                });
                (PathBuf::from(d), entries)
            })
            .collect();
        move |dir: &Path| match map.get(dir) {
            Some(Some(es)) => {
                Ok(es.iter().map(|(p, k)| Entry { path: p.clone(), kind: *k }).collect())
            }
            Some(None) => Err(io::Error::from(io::ErrorKind::PermissionDenied)),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    #[test]
    fn an_unreadable_directory_is_skipped_and_the_rest_watched() {
        use Kind::*;
        let list = fake(&[
            ("/r", Some(&[("a.lua", File), ("secret", Dir), ("src", Dir), ("link", Other)])),
            ("/r/secret", None),
            ("/r/src", Some(&[("b.lua", File), ("notes.txt", File), ("deep", Dir)])),
            ("/r/src/deep", Some(&[("c.lua", File)])),
        ]);
        let w = walk(Path::new("/r"), &Filter::new("*.lua", &[]), &list);
        let mut dirs = w.dirs.clone();
        dirs.sort();
        assert_eq!(dirs, ["/r", "/r/src", "/r/src/deep"].map(PathBuf::from));
        assert_eq!(w.dirs[0], PathBuf::from("/r"), "the root first");
        assert_eq!(w.skipped.len(), 1);
        assert_eq!(w.skipped[0].0, PathBuf::from("/r/secret"));
        let mut files = w.files.clone();
        files.sort();
        assert_eq!(files, ["/r/a.lua", "/r/src/b.lua", "/r/src/deep/c.lua"].map(PathBuf::from));
        let m = skipped_message(Path::new("/r"), &w.skipped).unwrap();
        assert!(m.contains("cannot read '/r/secret'") && m.contains("not watched"), "{m}");
    }

    #[test]
    fn ignored_directories_are_not_entered() {
        use Kind::*;
        let list = fake(&[
            ("/r", Some(&[(".git", Dir), ("node_modules", Dir), ("out", Dir), ("src", Dir)])),
            ("/r/src", Some(&[])),
            ("/r/out", Some(&[])),
        ]);
        let w = walk(Path::new("/r"), &Filter::new("*.lua", &["out".to_owned()]), &list);
        assert_eq!(w.dirs, ["/r", "/r/src"].map(PathBuf::from));
        assert!(w.skipped.is_empty(), "the ignored ones were never listed");
    }

    #[test]
    fn many_unreadable_directories_make_one_short_message() {
        let skipped: Vec<(PathBuf, io::Error)> = (0..500)
            .map(|i| {
                (PathBuf::from(format!("/proc/{i}/fd")), io::ErrorKind::PermissionDenied.into())
            })
            .collect();
        let m = skipped_message(Path::new("/"), &skipped).unwrap();
        assert!(m.contains("cannot read 500 directories"), "{m}");
        assert!(m.len() < 300, "{m}");
        assert!(skipped_message(Path::new("/"), &[]).is_none());
    }
}
