//! What the filesystem says about a file's current content without reading it.

use std::io;
use std::path::Path;
#[cfg(not(unix))]
use std::time::SystemTime;

/// Device, inode, size, modification and change time of the file a path resolves to (symlinks
/// followed). Any rewrite moves the change time, which no tool can set back; a symlink swap
/// (Kubernetes Secret volumes) resolves to another inode. Equal stamps: same content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    pub(crate) fn of(path: &Path) -> io::Result<Stamp> {
        let meta = std::fs::metadata(path)?;
        Ok(Stamp::from_metadata(&meta))
    }

    #[cfg(unix)]
    fn from_metadata(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    #[cfg(not(unix))]
    fn from_metadata(meta: &std::fs::Metadata) -> Stamp {
        let nanos = |t: io::Result<SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or((0, 0), |d| {
                    (d.as_secs() as i64, i64::from(d.subsec_nanos()))
                })
        };
        Stamp {
            dev: 0,
            ino: 0,
            len: meta.len(),
            modified: nanos(meta.modified()),
            changed: nanos(meta.created()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_and_swap_change_the_stamp_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "one").unwrap();
        let first = Stamp::of(&a).unwrap();
        assert_eq!(Stamp::of(&a).unwrap(), first);
        // Same size, rewritten in place.
        std::fs::write(&a, "two").unwrap();
        assert_ne!(Stamp::of(&a).unwrap(), first);
        // A symlink swapped to another file.
        let b = dir.path().join("b");
        std::fs::write(&b, "two").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let via_a = Stamp::of(&link).unwrap();
        let tmp = dir.path().join("tmp");
        std::os::unix::fs::symlink(&b, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert_ne!(Stamp::of(&link).unwrap(), via_a);
    }
}
