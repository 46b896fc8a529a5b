//! The writer task: takes batches off the queue, merges what waits into one transaction (up to
//! [`MAX_BATCH_ROWS`]), writes it and retries it until it is written; and the daily clean-up of old days.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{Backend, Batch, Day, HistoryStats};
use crate::{clock::now_ms, task::Backoff};

/// Most rows in one transaction: big enough for COPY to run at full speed, small enough that a catch-up after
/// an outage commits (and frees memory) as it goes.
pub(crate) const MAX_BATCH_ROWS: usize = 50_000;

/// Tells the writer that nothing more will be queued: it writes what is queued and stops.
pub(crate) struct Close(CancellationToken);

impl Close {
    pub fn close(&self) {
        self.0.cancel();
    }

    pub fn token(&self) -> CancellationToken {
        self.0.clone()
    }
}

pub(super) fn spawn(
    backend: Arc<dyn Backend>,
    rx: mpsc::UnboundedReceiver<Batch>,
    backlog: Arc<AtomicU64>,
    stats: HistoryStats,
) -> (Close, JoinHandle<()>) {
    let close = CancellationToken::new();
    let writer =
        Writer { backend, backlog, stats, backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)) };
    (Close(close.clone()), tokio::spawn(writer.run(rx, close)))
}

struct Writer {
    backend: Arc<dyn Backend>,
    backlog: Arc<AtomicU64>,
    stats: HistoryStats,
    backoff: Backoff,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Batch>, close: CancellationToken) {
        loop {
            let first = tokio::select! {
                biased;
                Some(batch) = rx.recv() => batch,
                _ = close.cancelled() => break,
                else => break,
            };
            let batch = gather(first, &mut rx);
            self.write(batch).await;
        }
        // Closing: nothing more is queued once the engine has drained; write what is.
        while let Ok(first) = rx.try_recv() {
            let batch = gather(first, &mut rx);
            self.write(batch).await;
        }
    }

    /// Writes the batch, retrying until it is written (at-least-once: a write that failed after its commit is
    /// written again, and adds nothing).
    async fn write(&mut self, batch: Batch) {
        let rows = batch.rows() as u64;
        let mut failing_since: Option<Instant> = None;
        let mut last_log: Option<Instant> = None;
        loop {
            let started = Instant::now();
            match self.backend.write(&batch).await {
                Ok(()) => {
                    self.stats.write_seconds.inc_by(started.elapsed().as_secs_f64());
                    self.stats.rows_written.inc_by(rows);
                    self.stats.batches_written.inc();
                    let left = self.backlog.fetch_sub(rows, Ordering::AcqRel) - rows;
                    self.stats.backlog_rows.set(left as i64);
                    if let Some(since) = failing_since {
                        tracing::info!(
                            backend = self.backend.name(),
                            after_secs = since.elapsed().as_secs_f64(),
                            backlog_rows = left,
                            "history writes succeed again"
                        );
                    }
                    self.backoff.reset();
                    return;
                }
                Err(e) => {
                    self.stats.write_errors.inc();
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if last_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(30)) {
                        last_log = Some(Instant::now());
                        tracing::warn!(
                            backend = self.backend.name(),
                            error = format!("{e:#}"),
                            failing_secs = since.elapsed().as_secs_f64(),
                            backlog_rows = self.backlog.load(Ordering::Acquire),
                            "history write failed; retrying (the live map is not affected)"
                        );
                    }
                    self.backoff.wait().await;
                }
            }
        }
    }
}

/// The first batch and whatever else waits, up to [`MAX_BATCH_ROWS`].
fn gather(mut batch: Batch, rx: &mut mpsc::UnboundedReceiver<Batch>) -> Batch {
    while batch.rows() < MAX_BATCH_ROWS {
        match rx.try_recv() {
            Ok(more) => batch.append(more),
            Err(_) => break,
        }
    }
    batch
}

/// Drops the days older than `days` (today counts as one) at start and then hourly; `days == 0` keeps all.
pub(super) fn spawn_retention(backend: Arc<dyn Backend>, days: u32, stop: CancellationToken) {
    if days == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let oldest_kept = Day(Day::of(now_ms()).0 - i64::from(days) + 1);
            if let Err(e) = drop_before(backend.as_ref(), oldest_kept).await {
                tracing::warn!(error = format!("{e:#}"), "could not drop old history days; will try again in an hour");
            }
        }
    });
}

/// Drops every day before `oldest_kept`, whole.
pub(crate) async fn drop_before(backend: &dyn Backend, oldest_kept: Day) -> anyhow::Result<Vec<Day>> {
    let mut dropped = Vec::new();
    for day in backend.days().await? {
        if day < oldest_kept {
            backend.drop_day(day).await?;
            tracing::info!(day = day.suffix(), "dropped a day of history");
            dropped.push(day);
        }
    }
    Ok(dropped)
}
