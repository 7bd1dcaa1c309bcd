//! What several integration tests use.

/// The process's inotify instances (file descriptors on an inotify inode).
pub fn inotify_instances() -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains("inotify"))
        })
        .count()
}
