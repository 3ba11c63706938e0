//! Writing secrets (the standalone server's generated key) where only this user can read them,
//! without following links someone else planted.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Tries at finding a free name for a fresh directory (someone may have taken the first ones).
const FRESH_DIR_ATTEMPTS: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    #[error("{0} is a symbolic link; refusing to write secrets through it")]
    Symlink(PathBuf),
    #[error("{0} exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error("{0} is writable by other users (mode {1:o}); use a directory only you can write to")]
    Shared(PathBuf, u32),
    #[error("cannot create a directory under {0}")]
    NoFreshDir(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PrivateError + '_ {
    move |source| PrivateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `path` made ready for secrets: created (mode 0700) when missing; refused when it is a
/// symbolic link, not a directory, or writable by group or others.
pub fn private_dir(path: &Path) -> Result<PathBuf, PrivateError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(PrivateError::Symlink(path.into())),
        Ok(meta) if !meta.is_dir() => Err(PrivateError::NotADirectory(path.into())),
        Ok(meta) => {
            let mode = mode_of(&meta);
            if mode & 0o022 != 0 {
                return Err(PrivateError::Shared(path.into(), mode & 0o7777));
            }
            Ok(path.to_path_buf())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            dir_builder(true).create(path).map_err(io_err(path))?;
            Ok(path.to_path_buf())
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

/// A new directory (mode 0700) under `parent` named `<prefix>-<pid>-<nanos>`, created
/// exclusively: an existing file, directory or link of that name is never reused.
pub fn fresh_dir(parent: &Path, prefix: &str) -> Result<PathBuf, PrivateError> {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for attempt in 0..FRESH_DIR_ATTEMPTS {
        let path = parent.join(format!(
            "{prefix}-{}-{:x}",
            std::process::id(),
            nanos.wrapping_add(u128::from(attempt) * 7919)
        ));
        match dir_builder(false).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Err(PrivateError::NoFreshDir(parent.into()))
}

/// Write `contents` to `dir/name` with permissions `mode`: into a new file created exclusively
/// (never through an existing file or link), then renamed over `name` (a link at `name` is
/// replaced, not followed).
pub fn write_file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), PrivateError> {
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // A leftover from a crashed run is ours to remove (the directory is private).
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    set_mode(&mut options, mode);
    let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(contents).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &target).map_err(io_err(&target))
}

#[cfg(unix)]
fn dir_builder(recursive: bool) -> std::fs::DirBuilder {
    use std::os::unix::fs::DirBuilderExt;
    let mut b = std::fs::DirBuilder::new();
    b.recursive(recursive).mode(0o700);
    b
}

#[cfg(not(unix))]
fn dir_builder(recursive: bool) -> std::fs::DirBuilder {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(recursive);
    b
}

#[cfg(unix)]
fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode()
}

#[cfg(not(unix))]
fn mode_of(_meta: &std::fs::Metadata) -> u32 {
    0o700
}

#[cfg(unix)]
fn set_mode(options: &mut std::fs::OpenOptions, mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(mode);
}

#[cfg(not(unix))]
fn set_mode(_options: &mut std::fs::OpenOptions, _mode: u32) {}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn fresh_dirs_are_private_and_never_reused() {
        let parent = tempfile::tempdir().unwrap();
        let a = fresh_dir(parent.path(), "x").unwrap();
        let b = fresh_dir(parent.path(), "x").unwrap();
        assert_ne!(a, b);
        assert_eq!(mode(&a), 0o700);
        write_file(&a, "tls.key", b"secret", 0o600).unwrap();
        assert_eq!(mode(&a.join("tls.key")), 0o600);
        assert_eq!(std::fs::read(a.join("tls.key")).unwrap(), b"secret");
    }

    #[test]
    fn links_are_replaced_not_followed_and_shared_or_linked_dirs_refused() {
        let parent = tempfile::tempdir().unwrap();
        let victim = parent.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let dir = private_dir(&parent.path().join("certs")).unwrap();
        assert_eq!(mode(&dir), 0o700);
        std::os::unix::fs::symlink(&victim, dir.join("tls.key")).unwrap();
        write_file(&dir, "tls.key", b"secret", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(
            !std::fs::symlink_metadata(dir.join("tls.key"))
                .unwrap()
                .file_type()
                .is_symlink()
        );

        let link = parent.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(private_dir(&link), Err(PrivateError::Symlink(_))));
        assert!(matches!(
            private_dir(&victim),
            Err(PrivateError::NotADirectory(_))
        ));
        let shared = parent.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            private_dir(&shared),
            Err(PrivateError::Shared(..))
        ));
    }
}
