//! The start-up proof that the server refuses to rename over a name: an
//! SFTP server other than OpenSSH, or one behind a gateway, may replace
//! the target of a plain rename, and there two replicas could each
//! publish the same file. A probe file is created twice under
//! [`TEMP_DIR`], the second time with other bytes: the second must be
//! refused and the first bytes kept. Then it is removed, and so are the
//! probe files of processes killed during their probe.

use bytes::Bytes;

use super::super::error::{DestinationError, FailureKind};
use super::{Sftp, TEMP_DIR};

impl Sftp {
    /// Proves the server refuses to create a name twice, and cleans up.
    ///
    /// # Errors
    /// [`FailureKind::Permanent`] when the server replaced the file;
    /// otherwise the failure met (refused login, unknown host key, a
    /// read-only folder, a timeout, ...).
    pub async fn probe(&self) -> Result<(), DestinationError> {
        let name = format!("{TEMP_DIR}/{}", super::super::leftovers::probe_name());
        let mut created = false;
        let proven = self.prove(&name, &mut created).await;
        // Nothing to remove if its first create was refused (a refused
        // login, an unknown host key); one whose outcome is unknown is.
        if created {
            if let Err(err) = self.delete(&name).await {
                tracing::warn!(destination = %self.url, path = %self.key(&name), error = %crate::error_chain::Chain(&err), "could not remove the probe file");
            }
        }
        proven?;
        // Those of processes killed during their probe, once this one passed.
        if let Err(err) = self.remove_left_probes().await {
            tracing::warn!(destination = %self.url, error = %crate::error_chain::Chain(&err), "could not remove the probe files killed processes left; the next start tries again");
        }
        Ok(())
    }

    async fn prove(&self, name: &str, created: &mut bool) -> Result<(), DestinationError> {
        let first =
            Bytes::from_static(b"esr-exporter: proves this server refuses a second create\n");
        let created_first = self.create_bytes(name, first.clone()).await;
        *created = super::super::probe::might_have_created(&created_first);
        created_first?;
        let second = self
            .create_bytes(name, Bytes::from_static(b"replaced\n"))
            .await;
        match second {
            Err(err) if err.kind == FailureKind::Occupied => {}
            Err(err) => return Err(err),
            Ok(_) => return Err(self.overwrote(name)),
        }
        match self.read_small(name).await? {
            Some(kept) if kept == first => Ok(()),
            _ => Err(self.overwrote(name)),
        }
    }

    fn overwrote(&self, name: &str) -> DestinationError {
        DestinationError::new(
            FailureKind::Permanent,
            &self.url,
            "probe",
            &self.key(name),
            "the server replaced an existing file on rename: it cannot guarantee a file is \
             delivered once (refused; use a server whose SFTP rename refuses an existing \
             target, as OpenSSH's does)",
        )
    }
}
