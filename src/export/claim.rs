//! Claiming: `TO_EXPORT` records in chunks, one short transaction each,
//! every claimed chunk appended to the temporary file as it commits, so
//! memory holds one chunk, never the backlog. Then the count check and
//! staging.

use std::time::{Duration, Instant};

use bson::oid::ObjectId;

use super::context::RunContext;
use super::file::ExportFile;
use super::{ExportError, Exporter};
use crate::store::{Claim, ClaimedChunk, RunDoc};

/// Where the claim's time went, for the log line of the written file.
#[derive(Debug, Default)]
struct Timings {
    /// Claim transactions in all (reads, writes, commits, retries).
    claim: Duration,
    /// Of which reading the chunks' records.
    claim_read: Duration,
    /// Of which writing them `EXPORTING` and advancing the run.
    claim_write: Duration,
    /// Writing the file's rows.
    write: Duration,
}

/// The size of the next claim: `export.chunk_size` at most; after a
/// conflict, the size that got through (each retry reads half as many
/// records); then an eighth of `export.chunk_size` more after each claim that
/// goes through whole. A concurrent writer's chance of touching a claim
/// grows with the claim's size times its duration, so under one the size
/// settles where conflicts are rare instead of each claim starting at full
/// size, conflicting and halving again; without one it stays at the most.
#[derive(Debug)]
struct ChunkSize {
    max: usize,
    next: usize,
}

impl ChunkSize {
    fn new(max: usize) -> Self {
        Self { max, next: max }
    }

    /// After a claim asked for `offered` records that got through with a
    /// limit of `covered` (fewer when its retries shrank it).
    fn after(&mut self, offered: usize, covered: usize) {
        self.next = if covered < offered {
            covered.max(1)
        } else {
            (self.next + (self.max / 8).max(1)).min(self.max)
        };
    }
}

impl Exporter {
    /// Phase 1 and 2: rewrite what is claimed, claim the rest, check the
    /// count, stage the file and record it (`FINALIZING`), or record that
    /// there is nothing to write. Returns the mark boundaries.
    pub(super) async fn claim_and_stage(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
    ) -> Result<Vec<ObjectId>, ExportError> {
        let (mut writer, mut boundaries) = self.rewrite_claimed(ctx, run).await?;
        let timings = self
            .claim_waiting(ctx, run, &mut writer, &mut boundaries)
            .await?;
        let written = writer.as_ref().map_or(0, ExportFile::count);
        self.verify_claimed(ctx, run, written).await?;
        let Some(writer) = writer.filter(|w| w.count() > 0) else {
            // Nothing valid to write: no file (dropping a writer removes
            // its temporary file).
            ctx.record_nothing_to_write(run).await?;
            return Ok(boundaries);
        };
        let finishing = Instant::now();
        let staged = self.stage(ctx, writer, run).await?;
        tracing::info!(
            file = run.file_name.as_deref().unwrap_or(""),
            records = staged.record_count,
            sha256 = %staged.sha256,
            claim_ms = timings.claim.as_millis() as u64,
            claim_read_ms = timings.claim_read.as_millis() as u64,
            claim_write_ms = timings.claim_write.as_millis() as u64,
            write_ms = (timings.write + finishing.elapsed()).as_millis() as u64,
            "export file written"
        );
        Ok(boundaries)
    }

    /// Claims the waiting records up to the run's limit, chunk by chunk,
    /// stopping at a safe point on shutdown or the deadline.
    async fn claim_waiting(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
        writer: &mut Option<ExportFile>,
        boundaries: &mut Vec<ObjectId>,
    ) -> Result<Timings, ExportError> {
        let mut timings = Timings::default();
        let Some(up_to) = run.claim_up_to else {
            return Ok(timings);
        };
        let mut size = ChunkSize::new(self.settings.chunk_size as usize);
        loop {
            ctx.options.check()?;
            let claiming = Instant::now();
            let offered = size.next;
            let claimed = self.claim_chunk(ctx, run, (up_to, offered)).await?;
            timings.claim += claiming.elapsed();
            timings.claim_read += claimed.read_time;
            timings.claim_write += claimed.write_time;
            size.after(offered, claimed.limit);
            // Fewer read than the limit: none was left to read.
            let drained = claimed.covered < claimed.limit;
            let writing = Instant::now();
            self.take_chunk(ctx, run, claimed, writer, boundaries)
                .await?;
            timings.write += writing.elapsed();
            if drained {
                return Ok(timings);
            }
        }
    }

    async fn claim_chunk(
        &self,
        ctx: &mut RunContext<'_>,
        run: &RunDoc,
        next: (ObjectId, usize),
    ) -> Result<ClaimedChunk, ExportError> {
        let claim = Claim {
            run,
            deanery: ctx.deanery,
            owner: &ctx.lease.owner,
            lease_ttl: ctx.lease.ttl,
            batch_size: self.settings.cursor_batch_size,
        };
        Ok(ctx.store.claim_chunk(&mut ctx.session, claim, next).await?)
    }

    /// Applies a committed claim to the run and appends its rows.
    async fn take_chunk(
        &self,
        ctx: &mut RunContext<'_>,
        run: &mut RunDoc,
        chunk: ClaimedChunk,
        writer: &mut Option<ExportFile>,
        boundaries: &mut Vec<ObjectId>,
    ) -> Result<(), ExportError> {
        if chunk.last_id.is_some() {
            run.last_claimed_id = chunk.last_id;
        }
        run.claimed += chunk.rows.len() as i64;
        run.rejected += chunk.rejections.len() as i64;
        for (id, reason) in &chunk.rejections {
            tracing::warn!(record_id = %id, reason = %reason, "record rejected");
        }
        if let Some((seq, name)) = chunk.assigned_file {
            run.seq = Some(seq);
            run.file_name = Some(name);
        }
        if chunk.rows.is_empty() {
            return Ok(());
        }
        if writer.is_none() {
            *writer = Some(self.open_file(run, ctx.deanery).await?);
        }
        boundaries.extend(chunk.rows.last().map(|row| row.id));
        self.append(writer, chunk.rows).await
    }
}

#[cfg(test)]
mod tests {
    use super::ChunkSize;

    #[test]
    fn a_conflict_keeps_the_next_claims_small_and_clean_claims_grow_them_back() {
        let mut size = ChunkSize::new(1000);
        size.after(1000, 1000);
        assert_eq!(size.next, 1000, "never over export.chunk_size");
        size.after(1000, 250);
        assert_eq!(size.next, 250, "the size the conflict's retries reached");
        size.after(250, 250);
        assert_eq!(size.next, 375, "an eighth of the most more");
        for _ in 0..10 {
            size.after(size.next, size.next);
        }
        assert_eq!(size.next, 1000);
        size.after(1000, 1);
        assert_eq!(size.next, 1, "at least one id");
        size.after(1, 1);
        assert_eq!(size.next, 126);
    }

    #[test]
    fn the_last_short_claim_of_a_backlog_is_not_a_conflict() {
        let mut size = ChunkSize::new(1000);
        size.after(1000, 500);
        size.after(37, 37);
        assert_eq!(size.next, 625);
    }
}
