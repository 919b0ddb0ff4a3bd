//! Files and directories only their owner can read: the signing key, the
//! data directory with the database and uploads. Shoppers' conversations
//! and files are personal data, and a key readable by others signs tokens
//! for anyone.

use std::path::Path;

/// Creates `dir` (and its parents) with mode 0700 when missing. An existing
/// directory is left as it is, with a warning when others can read it: it
/// may be the host's choice (`--data-dir .`), and is not ours to change.
///
/// # Errors
/// The directory cannot be created.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777),
                    "the directory is open to other users; chmod 700 it");
            }
        }
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Options that create a new file readable by its owner only (0600), and
/// fail if it exists.
pub(crate) fn private_file() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Writes a new file readable by its owner only (0600); fails if it exists.
///
/// # Errors
/// The file exists or cannot be written.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    private_file().open(path)?.write_all(contents)
}
