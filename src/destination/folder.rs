//! A local folder as a destination. A name is created only if absent by a
//! hard link (`link(2)` fails on any existing name and never replaces it),
//! from a temporary file already complete and fsynced in the same folder;
//! the folder is fsynced after. A reader never sees a partial file.
//!
//! Its temporaries are `.<name>.<random>.part`: dot files a collector
//! skips, removed by [`Folder::remove_temporaries`] when a killed process
//! left them.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::error::{DestinationError, FailureKind};
use super::upload::{self, Ready};
use super::Found;

const TEMP_SUFFIX: &str = ".part";

/// A folder on this host.
#[derive(Debug, Clone)]
pub struct Folder {
    dir: PathBuf,
    url: String,
    mode: u32,
}

impl Folder {
    /// The folder `dir`; files created in it get exactly `mode`.
    pub fn new(dir: &Path, mode: u32) -> Self {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        Self {
            url: dir.display().to_string(),
            dir,
            mode,
        }
    }

    /// The folder's absolute path.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The absolute path of a file name.
    pub fn key(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Nothing to look at over a network: a folder that cannot be
    /// written is said by the output folder's own check and by the run
    /// that meets it.
    ///
    /// # Errors
    /// Never.
    pub async fn check(&self) -> Result<(), DestinationError> {
        Ok(())
    }

    /// Nothing to prove: a hard link never replaces a name. The folder is
    /// created by the first file created in it.
    ///
    /// # Errors
    /// Never.
    pub async fn probe(&self) -> Result<(), DestinationError> {
        Ok(())
    }

    /// Size of the regular file under the name; `None` when absent.
    ///
    /// # Errors
    /// [`FailureKind::Occupied`] when something else (a symlink, a folder)
    /// holds the name; I/O errors as transient.
    pub async fn lookup(&self, name: &str) -> Result<Option<Found>, DestinationError> {
        let path = self.dir.join(name);
        let looked = self.blocking("lookup", name, move || {
            match std::fs::symlink_metadata(&path) {
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
                meta => meta.map(Some),
            }
        });
        let Some(meta) = looked.await? else {
            return Ok(None);
        };
        if !meta.file_type().is_file() {
            return Err(self.fail(
                FailureKind::Occupied,
                "lookup",
                name,
                "exists and is not a regular file (a symlink or a folder holds the name); \
                 refusing to publish over it (move it away, and the next attempt publishes)"
                    .to_owned(),
            ));
        }
        Ok(Some(found(meta.len())))
    }

    /// The SHA-256 of the file under the name; `None` when absent.
    ///
    /// # Errors
    /// I/O errors as transient.
    pub async fn sha256(
        &self,
        name: &str,
        _found: &Found,
    ) -> Result<Option<String>, DestinationError> {
        let path = self.dir.join(name);
        self.blocking("read", name, move || hash_if_present(&path))
            .await
    }

    /// The bytes of a small file such as a manifest; `None` when absent.
    ///
    /// # Errors
    /// I/O errors as transient.
    pub async fn read_small(&self, name: &str) -> Result<Option<Bytes>, DestinationError> {
        let path = self.dir.join(name);
        self.blocking("read", name, move || match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        })
        .await
    }

    /// Creates the name with these bytes only if nothing is there.
    ///
    /// # Errors
    /// [`FailureKind::Occupied`] when the name exists.
    pub async fn create_bytes(&self, name: &str, bytes: Bytes) -> Result<Found, DestinationError> {
        let (dir, target, mode) = (self.dir.clone(), name.to_owned(), self.mode);
        self.blocking("create", name, move || {
            let temp = temporary(&dir, &target, mode)?;
            (&temp).write_all(&bytes)?;
            temp.as_file().sync_all()?;
            link_final(temp.path(), &dir, &target)?;
            Ok(found(bytes.len() as u64))
        })
        .await
    }

    /// Creates the name from a local file only if nothing is there: a hard
    /// link to it when it is on the same file system, else a copy.
    ///
    /// # Errors
    /// [`FailureKind::Occupied`] when the name exists.
    pub async fn create_from_file(
        &self,
        name: &str,
        file: &Path,
    ) -> Result<Found, DestinationError> {
        let (dir, target, source, mode) = (
            self.dir.clone(),
            name.to_owned(),
            file.to_owned(),
            self.mode,
        );
        self.blocking("create", name, move || {
            let size = std::fs::metadata(&source)?.len();
            match link_final(&source, &dir, &target) {
                Err(err) if err.raw_os_error() == Some(18) => {
                    // EXDEV: another file system; copy beside the name first.
                    let temp = temporary(&dir, &target, mode)?;
                    io::copy(&mut File::open(&source)?, &mut temp.as_file())?;
                    temp.as_file().sync_all()?;
                    link_final(temp.path(), &dir, &target)?;
                }
                linked => linked?,
            }
            Ok(found(size))
        })
        .await
    }

    /// Nothing to upload: the staged file itself is linked.
    ///
    /// # Errors
    /// None.
    pub(super) async fn upload_file(
        &self,
        _name: &str,
        file: &Path,
    ) -> Result<Ready, DestinationError> {
        Ok(Ready::Local(file.to_owned()))
    }

    /// Creates the name from what is ready only if absent.
    ///
    /// # Errors
    /// [`FailureKind::Occupied`] when the name exists.
    pub(super) async fn finish(&self, name: &str, ready: Ready) -> Result<Found, DestinationError> {
        match ready {
            Ready::Local(file) => self.create_from_file(name, &file).await,
            Ready::Bytes(bytes) => self.create_bytes(name, bytes).await,
            Ready::Temporary { .. } => Err(upload::mismatched(&self.url, &self.key(name))),
        }
    }

    /// Removes the name (absent is fine).
    ///
    /// # Errors
    /// I/O errors as transient.
    pub async fn delete(&self, name: &str) -> Result<(), DestinationError> {
        let (dir, path) = (self.dir.clone(), self.dir.join(name));
        self.blocking("delete", name, move || {
            match std::fs::remove_file(&path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
            File::open(&dir)?.sync_all()
        })
        .await
    }

    /// Removes the temporaries of names starting with `name_prefix` that a
    /// killed process left (only while holding the deanery's lease).
    ///
    /// # Errors
    /// When the folder cannot be listed.
    pub async fn remove_temporaries(&self, name_prefix: &str) -> Result<usize, DestinationError> {
        let (dir, prefix) = (self.dir.clone(), format!(".{name_prefix}"));
        self.blocking("remove temporaries", name_prefix, move || {
            let entries = match std::fs::read_dir(&dir) {
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
                entries => entries?,
            };
            let mut removed = 0;
            for entry in entries {
                let name = entry?.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(&prefix) && name.ends_with(TEMP_SUFFIX) {
                    std::fs::remove_file(dir.join(name.as_ref()))?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }

    /// Runs file system work off the async threads, naming the operation
    /// and the name in its error.
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        name: &str,
        work: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> Result<T, DestinationError> {
        let done = tokio::task::spawn_blocking(work)
            .await
            .unwrap_or_else(|join| Err(io::Error::other(join.to_string())));
        done.map_err(|err| {
            let kind = match err.kind() {
                io::ErrorKind::AlreadyExists => FailureKind::Occupied,
                // A full disk, a read-only mount, too many open files: the
                // folder may be fixed while the command waits.
                _ => FailureKind::Transient,
            };
            self.fail(kind, op, name, err.to_string())
        })
    }

    fn fail(
        &self,
        kind: FailureKind,
        op: &'static str,
        name: &str,
        detail: String,
    ) -> DestinationError {
        DestinationError::new(kind, &self.url, op, &self.key(name), detail)
    }
}

fn found(size: u64) -> Found {
    Found {
        size,
        etag: None,
        version: None,
    }
}

/// A temporary file beside `name`, with exactly `mode` (the umask trims
/// the mode a file is created with; `fchmod` is not subject to it).
fn temporary(dir: &Path, name: &str, mode: u32) -> io::Result<tempfile::NamedTempFile> {
    std::fs::create_dir_all(dir)?;
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(TEMP_SUFFIX)
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(temp)
}

/// Links `source` under `name` (never over an existing name), then makes
/// the new name durable.
fn link_final(source: &Path, dir: &Path, name: &str) -> io::Result<()> {
    std::fs::hard_link(source, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// The SHA-256 of the file at `path`, lowercase hex; `None` when absent.
///
/// # Errors
/// On I/O errors other than the file being absent.
pub(crate) fn hash_if_present(path: &Path) -> io::Result<Option<String>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        match file.read(&mut buffer)? {
            0 => break,
            read => hasher.update(&buffer[..read]),
        }
    }
    Ok(Some(hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> (tempfile::TempDir, Folder) {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::new(dir.path(), 0o640);
        (dir, folder)
    }

    #[tokio::test]
    async fn a_name_is_created_once_and_never_replaced() {
        let (dir, folder) = folder();
        folder
            .create_bytes("F.DAT", Bytes::from_static(b"one"))
            .await
            .unwrap();
        let again = folder
            .create_bytes("F.DAT", Bytes::from_static(b"two"))
            .await
            .unwrap_err();
        assert_eq!(again.kind, FailureKind::Occupied, "{again}");
        assert_eq!(std::fs::read(dir.path().join("F.DAT")).unwrap(), b"one");
        let mode = std::fs::metadata(dir.path().join("F.DAT"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary is left: {left:?}");
    }

    #[tokio::test]
    async fn a_symlink_under_the_name_is_occupied_and_absent_is_none() {
        let (dir, folder) = folder();
        assert_eq!(folder.lookup("F.DAT").await.unwrap(), None);
        assert_eq!(
            folder.sha256("F.DAT", &Found::default()).await.unwrap(),
            None
        );
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("F.DAT")).unwrap();
        let err = folder.lookup("F.DAT").await.unwrap_err();
        assert_eq!(err.kind, FailureKind::Occupied, "{err}");
        assert!(err.detail.contains("not a regular file"), "{err}");
    }

    #[tokio::test]
    async fn only_part_temporaries_of_the_prefix_are_removed() {
        let (dir, folder) = folder();
        for name in [
            ".DE_MER_APP_1.DAT.abc123.part",
            ".DE_MER_APP_1.DAT.final.tmp",
            ".DE_LDN_APP_1.DAT.x.part",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(folder.remove_temporaries("DE_MER_APP_").await.unwrap(), 1);
        assert!(dir.path().join(".DE_MER_APP_1.DAT.final.tmp").exists());
        assert!(dir.path().join(".DE_LDN_APP_1.DAT.x.part").exists());
    }
}
