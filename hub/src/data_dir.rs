//! The hub's state directory (`hub.data_dir`).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Creating it (or a parent) failed.
    #[error(
        "cannot create data directory {}: {error}\n  \
         hint: create it, owned by the user edgehub runs as with mode 0700, or point \
         `hub.data_dir` in the config at a writable directory (under systemd, \
         StateDirectory=edgehub provides one)",
        path.display()
    )]
    Create {
        /// The directory that was to be created.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// Something other than a directory is in the way.
    #[error(
        "data directory {} exists but is not a directory\n  \
         hint: move it away, or point `hub.data_dir` in the config elsewhere",
        path.display()
    )]
    NotADirectory {
        /// The offending path.
        path: PathBuf,
    },
}

/// Creates `path` (and missing parents) with mode 0700 if it does not exist yet.
/// An existing directory is used as it is: its owner chose its mode.
pub fn prepare(path: &Path) -> Result<(), DataDirError> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
    {
        Ok(()) if path.is_dir() => Ok(()),
        // `recursive(true)` reports success when the path exists as anything.
        Ok(()) => Err(DataDirError::NotADirectory {
            path: path.to_path_buf(),
        }),
        Err(_) if path.exists() && !path.is_dir() => Err(DataDirError::NotADirectory {
            path: path.to_path_buf(),
        }),
        Err(error) => Err(DataDirError::Create {
            path: path.to_path_buf(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn missing_directory_is_created_private() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("a/b/edgehub-data");
        prepare(&dir).expect("created");
        let mode = std::fs::metadata(&dir)?.permissions().mode() & 0o777;
        // The process umask can only remove bits, so at most 0700.
        assert_eq!(mode & !0o700, 0, "mode {mode:o}");
        Ok(())
    }

    #[test]
    fn existing_directory_is_accepted() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        prepare(tmp.path()).expect("existing dir is fine");
        Ok(())
    }

    #[test]
    fn a_file_in_the_way_is_reported_with_its_path() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let file = tmp.path().join("edgehub-data");
        std::fs::write(&file, b"")?;
        let error = prepare(&file).expect_err("a file is not a directory");
        assert!(matches!(error, DataDirError::NotADirectory { .. }));
        assert!(error.to_string().contains(&file.display().to_string()));
        Ok(())
    }

    #[test]
    fn uncreatable_directory_error_names_the_path_and_the_fix() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let file = tmp.path().join("file");
        std::fs::write(&file, b"")?;
        let dir = file.join("edgehub-data");
        let error = prepare(&dir).expect_err("parent is a file");
        let message = error.to_string();
        assert!(message.contains(&dir.display().to_string()), "{message}");
        assert!(message.contains("hub.data_dir"), "{message}");
        Ok(())
    }
}
