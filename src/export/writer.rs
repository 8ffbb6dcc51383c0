//! The run's file as the steps see it: its header from the run document,
//! opening it, appending rows, all off the async workers.

use super::file::{ExportFile, FileHeader};
use super::io::blocking;
use super::{ExportError, Exporter};
use crate::domain::{AppRow, Deanery};
use crate::store::RunDoc;

impl Exporter {
    pub(super) fn header(
        &self,
        run: &RunDoc,
        deanery: &Deanery,
    ) -> Result<FileHeader, ExportError> {
        let (Some(file_name), Some(seq)) = (run.file_name.clone(), run.seq) else {
            return Err(ExportError::inconsistent(
                &run.id,
                "records are claimed but no file name is allocated",
            ));
        };
        Ok(FileHeader {
            deanery: deanery.clone(),
            date: run.file_date(),
            time: run.file_time(),
            seq,
            run_id: run.id.clone(),
            file_name,
            mode: self.settings.file_mode_bits(),
        })
    }

    pub(super) async fn open_file(
        &self,
        run: &RunDoc,
        deanery: &Deanery,
    ) -> Result<ExportFile, ExportError> {
        let header = self.header(run, deanery)?;
        let dir = self.settings.output_dir.clone();
        blocking(&self.settings.output_dir, move || {
            ExportFile::create(&dir, header)
        })
        .await
    }

    /// Appends rows to the open file (the file moves to a blocking thread
    /// and back; on an error it is dropped, which removes it).
    pub(super) async fn append(
        &self,
        writer: &mut Option<ExportFile>,
        rows: Vec<AppRow>,
    ) -> Result<(), ExportError> {
        let mut file = writer
            .take()
            .expect("a file is open before rows are written");
        let file = blocking(&self.settings.output_dir, move || {
            file.write_rows(&rows).map(|()| file)
        })
        .await?;
        *writer = Some(file);
        Ok(())
    }

    /// Removes the deanery's temporary files an interrupted attempt left
    /// in this folder (only ever called while holding its lease).
    pub(super) async fn remove_stale_temporaries(
        &self,
        deanery: &Deanery,
    ) -> Result<(), ExportError> {
        let (dir, code) = (self.settings.output_dir.clone(), deanery.clone());
        let removed = blocking(&self.settings.output_dir, move || {
            super::file::remove_stale_temporaries(&dir, &code)
        })
        .await?;
        if removed > 0 {
            tracing::info!(removed, "removed temporary files of an interrupted run");
        }
        Ok(())
    }
}
