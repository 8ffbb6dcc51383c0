//! Making an uploaded temporary final: a plain `SSH_FXP_RENAME`, which
//! never overwrites, retried after a lost connection; a name taken is
//! said as such, and a rename whose outcome cannot be known (its
//! temporary gone, nothing under the name) is left in doubt.

use super::super::error::{DestinationError, FailureKind};
use super::super::Found;
use super::connect::Connection;
use super::failure::{explain, name_taken, no_such_file, rename_refusal_may_mean_taken, Failed};
use super::Sftp;

impl Sftp {
    /// Renames the temporary to the name without overwriting; a refused
    /// rename with the name taken is [`FailureKind::Occupied`].
    pub(super) async fn rename_into(
        &self,
        name: &str,
        temp: &str,
        size: u64,
    ) -> Result<Found, DestinationError> {
        let (dir, target) = (self.dir.clone(), self.key(name));
        let renamed = self
            .request("create", name, self.policy.timeout, |c| {
                let (dir, target, temp) = (dir.clone(), target.clone(), temp.to_owned());
                async move {
                    match rename_if_absent(&c, &temp, &target).await {
                        Ok(()) => Ok(Found {
                            size,
                            etag: None,
                            version: None,
                        }),
                        // Kept for the next try: removed once the policy gives up.
                        Err(failed) if failed.lost => Err(failed),
                        Err(failed) => {
                            let fs = c.sftp.fs_info(dir).await.ok().flatten();
                            Err(explain(failed, fs.as_ref(), size))
                        }
                    }
                }
            })
            .await;
        if renamed.is_err() {
            self.remove_temporary(name, temp).await;
        }
        renamed
    }

    /// Removes a temporary the rename gave up on (best effort: the next
    /// run of the deanery sweeps what is left).
    async fn remove_temporary(&self, name: &str, temp: &str) {
        let removed = self
            .request("remove temporary", name, self.policy.timeout, |c| {
                let temp = temp.to_owned();
                async move {
                    match c.sftp.remove_file(temp).await {
                        Err(err) if !no_such_file(&err) => Err(Failed::from(err)),
                        _ => Ok(()),
                    }
                }
            })
            .await;
        if let Err(err) = removed {
            tracing::warn!(error = %err, "could not remove a temporary file; the next run of the deanery removes it");
        }
    }
}

/// Plain `SSH_FXP_RENAME`, which refuses an existing target: the name is
/// taken when the server says so (status 11, ProFTPD), or when it refused
/// with the generic status (OpenSSH) or permission denied and the target
/// exists.
async fn rename_if_absent(c: &Connection, temp: &str, target: &str) -> Result<(), Failed> {
    let err = match c.sftp.rename(temp, target).await {
        Ok(()) => return Ok(()),
        Err(err) => err,
    };
    if name_taken(&err) {
        return Err(Failed::new(
            FailureKind::Occupied,
            "a file already holds the name (the server answered SSH_FX_FILE_ALREADY_EXISTS)",
        ));
    }
    // A rename tried again after a lost reply finds its temporary gone
    // when the first one applied: the name holds it, or (taken at once by
    // the receiver) nothing does, and whether it applied is unknown.
    let gone = no_such_file(&err) && !c.sftp.try_exists(temp).await.unwrap_or(true);
    let may_be_taken = gone || rename_refusal_may_mean_taken(&err);
    if may_be_taken && c.sftp.try_exists(target).await.unwrap_or(false) {
        return Err(Failed::new(
            FailureKind::Occupied,
            "a file already holds the name (the server refused to rename over it)",
        ));
    }
    if gone {
        return Err(Failed::new(
            FailureKind::Timeout,
            "the temporary file is gone and nothing holds the name: an earlier try of this \
             rename may have applied, and the file been taken since",
        ));
    }
    Err(Failed::from(err))
}
