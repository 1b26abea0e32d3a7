//! Small state files in the LUN's state directory (persistent reservations with
//! APTPL, saved mode pages): named by the LUN's UUID, written atomically — a
//! temporary file, fsync, rename, fsync of the directory — so a crash leaves the
//! old file or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::lun::LunConfig;

/// `<state_dir>/<kind>-<uuid hex>.state`, or `None` without a state directory.
pub fn path(config: &LunConfig, kind: &str) -> Option<PathBuf> {
    let dir = config.state_dir.as_ref()?;
    let id: String = config.uuid.iter().map(|b| format!("{b:02x}")).collect();
    Some(dir.join(format!("{kind}-{id}.state")))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes`, atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let tmp = path.with_extension("state.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(&dir)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Removes `path` durably; a missing file is no error.
pub fn remove(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads `path`; `Ok(None)` if it does not exist.
pub fn read(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replace_read_remove() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = LunConfig::new("l", [1; 16]);
        assert_eq!(path(&c, "x"), None);
        c.state_dir = Some(dir.path().to_path_buf());
        let p = path(&c, "mode").unwrap();
        assert!(p.ends_with("mode-01010101010101010101010101010101.state"));
        assert_eq!(read(&p).unwrap(), None);
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(read(&p).unwrap().as_deref(), Some("two"));
        assert!(!p.with_extension("state.tmp").exists());
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert_eq!(read(&p).unwrap(), None);
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let mut c = LunConfig::new("l", [2; 16]);
        c.state_dir = Some("/nonexistent/oxtarget-test".into());
        let p = path(&c, "mode").unwrap();
        assert!(write_atomic(&p, b"x").is_err());
    }
}
