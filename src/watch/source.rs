//! Reading a saved file's bytes, and the hash they are compared by.
//!
//! A watched tree may hold anything under a Lua file's name: a FIFO, a link to a device, a
//! file too big to keep. Opening a FIFO blocks until a writer comes, and reading `/dev/zero`
//! never ends, so `read` opens without blocking and reads only a regular file, up to a limit:
//! the worker, `poll` and `require`'s bookkeeping then never hang on such a file, nor fill
//! the memory with it. (`require` itself reads what its searcher finds, as without hotreload.)

// Runs on the compile worker, where a panic would end compiling ahead silently.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

/// The largest file whose bytes `poll` and `require` hash, to tell a save that changed
/// nothing: a bigger one (a sparse file claiming a terabyte, say) is taken as changed.
pub const MAX_HASHED: u64 = 256 << 20;

/// The bytes of the regular file at `path` (links followed), if it is one and holds at most
/// `limit` bytes; `None` for anything else: a FIFO, a device, a directory, a missing or
/// unreadable file, a bigger one.
pub fn read(path: &Path, limit: u64) -> Option<Vec<u8>> {
    // not even opened unless it looks regular: opening a FIFO or a device can act on it
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let file = open(path)?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > limit {
        return None;
    }
    let mut bytes = Vec::new();
    // a sparse file may claim more than the memory there is: fail rather than abort
    bytes.try_reserve_exact(usize::try_from(meta.len()).ok()?).ok()?;
    // the file may grow while it is read
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= limit).then_some(bytes)
}

/// Opens for reading without waiting for a FIFO's writer and without taking a terminal as
/// the process's own, should the path have become one since it was looked at (a regular file
/// reads as usual).
#[cfg(unix)]
fn open(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    OpenOptions::new().read(true).custom_flags(flags).open(path).ok()
}

#[cfg(not(unix))]
fn open(path: &Path) -> Option<File> {
    OpenOptions::new().read(true).open(path).ok()
}

/// The `content_hash` of the regular file at `path`, if it holds at most `MAX_HASHED` bytes.
pub fn hash_file(path: &Path) -> Option<u64> {
    read(path, MAX_HASHED).map(|bytes| content_hash(&bytes))
}

/// The hash `poll` and `require` compare a file's bytes by (`State::contents`), and the
/// worker's results with the file on disk.
pub fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("hotreload-source-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `read(path, limit)` on another thread, failing the test rather than hanging it.
    fn read_within(path: &Path, limit: u64) -> Option<Vec<u8>> {
        let (tx, rx) = mpsc::channel();
        let path = path.to_owned();
        std::thread::spawn(move || tx.send(read(&path, limit)).unwrap());
        rx.recv_timeout(Duration::from_secs(10)).expect("read returned")
    }

    #[test]
    fn reads_regular_files_and_links_to_them_up_to_the_limit() {
        let dir = scratch("regular");
        let file = dir.join("m.lua");
        std::fs::write(&file, b"return 1").unwrap();
        std::os::unix::fs::symlink(&file, dir.join("link.lua")).unwrap();
        assert_eq!(read(&file, 8).as_deref(), Some(&b"return 1"[..]));
        assert_eq!(read(&dir.join("link.lua"), 100).as_deref(), Some(&b"return 1"[..]));
        assert_eq!(read(&file, 7), None, "one byte over the limit");
        assert_eq!(read(&dir.join("missing.lua"), 100), None);
        assert_eq!(read(&dir, 1 << 20), None, "a directory");
        let sparse = std::fs::File::create(dir.join("sparse.lua")).unwrap();
        sparse.set_len(1 << 40).unwrap();
        assert_eq!(read(&dir.join("sparse.lua"), MAX_HASHED), None, "a terabyte, sparse");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_or_a_device_reads_as_nothing_without_blocking() {
        let dir = scratch("special");
        let fifo = dir.join("pipe.lua");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        assert_eq!(read_within(&fifo, u64::MAX), None, "a FIFO nobody writes to");
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero.lua")).unwrap();
        assert_eq!(read_within(&dir.join("zero.lua"), u64::MAX), None, "an endless device");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
