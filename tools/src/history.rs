//! The `history` scenario's parts: the history writer's progress read from `/metrics` while a load runs, and a
//! heat replay timed from the request to its first frame and to its last line.

use std::time::{Duration, Instant};

use serde::Serialize;

/// The writer's counters at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WriterSample {
    /// Seconds since sampling began.
    pub t: f64,
    pub rows_written: f64,
    pub backlog_rows: f64,
    pub rows_dropped: f64,
}

async fn sample(client: &reqwest::Client, url: &str, since: Instant) -> anyhow::Result<WriterSample> {
    let text = client.get(format!("{url}/metrics")).send().await?.text().await?;
    let read = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok()).unwrap_or(0.0)
    };
    Ok(WriterSample {
        t: since.elapsed().as_secs_f64(),
        rows_written: read("pulsemap_history_rows_written_total"),
        backlog_rows: read("pulsemap_history_backlog_rows"),
        rows_dropped: read("pulsemap_history_rows_dropped_total"),
    })
}

/// Samples the writer every `every` until `done` resolves, then on until its backlog is empty (at most
/// `drain_within` more): the samples, oldest first.
pub async fn watch_writer<T>(
    client: &reqwest::Client,
    url: &str,
    every: Duration,
    drain_within: Duration,
    done: impl std::future::Future<Output = T>,
) -> anyhow::Result<(T, Vec<WriterSample>)> {
    let since = Instant::now();
    let mut samples = vec![sample(client, url, since).await?];
    tokio::pin!(done);
    let mut ticker = tokio::time::interval(every);
    let result = loop {
        tokio::select! {
            result = &mut done => break result,
            _ = ticker.tick() => samples.push(sample(client, url, since).await?),
        }
    };
    let deadline = Instant::now() + drain_within;
    loop {
        let s = sample(client, url, since).await?;
        samples.push(s);
        if s.backlog_rows == 0.0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(every).await;
    }
    Ok((result, samples))
}

/// A replay, timed.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayTiming {
    /// From sending the request to the first `frame` line.
    pub first_frame_ms: f64,
    /// From sending the request to the last line.
    pub total_ms: f64,
    pub frames: u64,
    /// History rows the server read for it.
    pub rows: u64,
    pub bytes: u64,
}

/// `GET /api/history/heat?{query}`, read as it streams.
pub async fn time_replay(url: &str, query: &str) -> anyhow::Result<ReplayTiming> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut response = client.get(format!("{url}/api/history/heat?{query}")).send().await?;
    if !response.status().is_success() {
        anyhow::bail!("the replay answered {}: {}", response.status(), response.text().await.unwrap_or_default());
    }
    // The first line is the range; the first frame is whole once the second line has ended.
    let (mut body, mut lines, mut first_frame_ms) = (Vec::new(), 0usize, None);
    while let Some(chunk) = response.chunk().await? {
        lines += chunk.iter().filter(|b| **b == b'\n').count();
        body.extend_from_slice(&chunk);
        if first_frame_ms.is_none() && lines >= 2 {
            first_frame_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8(body)?;
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or("{}"))?;
    anyhow::ensure!(last["type"] == "end", "the replay did not end well: {last}");
    Ok(ReplayTiming {
        first_frame_ms: first_frame_ms.unwrap_or(total_ms),
        total_ms,
        frames: last["frames"].as_u64().unwrap_or(0),
        rows: last["rows"].as_u64().unwrap_or(0),
        bytes: text.len() as u64,
    })
}

/// The highest rate of rows written over any `window` of the samples, and the rate from the moment rows began to
/// queue (the last sample before any was queued or written) to the sample where the backlog was empty again:
/// the time the load took to connect before its first ping is not counted against the writer.
pub fn write_rates(samples: &[WriterSample], window: f64) -> (f64, f64) {
    let mut peak: f64 = 0.0;
    for (i, a) in samples.iter().enumerate() {
        if let Some(b) = samples[i..].iter().find(|b| b.t - a.t >= window) {
            peak = peak.max((b.rows_written - a.rows_written) / (b.t - a.t));
        }
    }
    let idle = |s: &WriterSample| s.backlog_rows == 0.0 && s.rows_written == samples[0].rows_written;
    let start = samples.iter().take_while(|s| idle(s)).last();
    let sustained = match (start, samples.last()) {
        (Some(a), Some(b)) if b.t > a.t => (b.rows_written - a.rows_written) / (b.t - a.t),
        _ => 0.0,
    };
    (peak, sustained)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: f64, rows_written: f64, backlog_rows: f64) -> WriterSample {
        WriterSample { t, rows_written, backlog_rows, rows_dropped: 0.0 }
    }

    #[test]
    fn the_rate_until_drained_starts_when_rows_begin_to_queue() {
        // Idle until 2 s (the load connecting), then 100 rows/s for 4 s, drained at 6 s.
        let samples = [
            at(0.0, 0.0, 0.0),
            at(1.0, 0.0, 0.0),
            at(2.0, 0.0, 0.0),
            at(3.0, 50.0, 50.0),
            at(4.0, 200.0, 0.0),
            at(5.0, 300.0, 20.0),
            at(6.0, 400.0, 0.0),
        ];
        let (peak, sustained) = write_rates(&samples, 2.0);
        assert_eq!(sustained, 100.0);
        assert_eq!(peak, 125.0);
    }

    #[test]
    fn a_writer_that_never_wrote_has_no_rate() {
        assert_eq!(write_rates(&[at(0.0, 0.0, 0.0), at(1.0, 0.0, 0.0)], 2.0), (0.0, 0.0));
        assert_eq!(write_rates(&[], 2.0), (0.0, 0.0));
    }
}
