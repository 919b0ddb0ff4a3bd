//! Counters and latency histograms a host can export (Prometheus, logs, an
//! admin page). Read them with [`Metrics::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Live counters, shared by the pool and the dispatcher.
pub struct Metrics {
    pub(crate) accepted: AtomicU64,
    pub(crate) degraded: AtomicU64,
    pub(crate) shed: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) persisted: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) slow_closed: AtomicU64,
    pub(crate) resumed: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) gap_repairs: AtomicU64,
    pub(crate) bus_lost: AtomicU64,
    pub(crate) hook_timeouts: AtomicU64,
    pub(crate) hook_failures: AtomicU64,
    /// Submit-to-ack latency of stored messages, in microseconds.
    path_latency: Mutex<Histogram<u64>>,
}

/// A point-in-time copy of [`Metrics`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    /// Commands the dispatcher took in (directly or degraded).
    pub accepted: u64,
    /// Of those, commands that waited past the deadline and went to the spill path.
    pub degraded: u64,
    /// Typing frames and read receipts dropped while a queue was long.
    pub shed: u64,
    /// Commands refused with `Overloaded` or `ShuttingDown`: the sender was told.
    pub refused: u64,
    /// Messages stored.
    pub persisted: u64,
    /// Sends recognised as retries of a stored message.
    pub duplicates: u64,
    /// Commands rejected by the message path (unauthorized, invalid, unknown conversation).
    pub rejected: u64,
    /// Frames queued to connections.
    pub delivered: u64,
    /// Connections closed as slow consumers.
    pub slow_closed: u64,
    /// Resumes (joins with replay) served.
    pub resumed: u64,
    /// Holes found in what a connection was sent (a stored message arrived
    /// past a missing one): each is replayed from the store.
    pub gaps: u64,
    /// Replays that repaired a connection's missing messages (after a gap,
    /// or found by the position check).
    pub gap_repairs: u64,
    /// Times the bus said envelopes to this node may have been lost.
    pub bus_lost: u64,
    /// Hook runs cut off by their timeout.
    pub hook_timeouts: u64,
    /// Hook runs that returned an error or panicked.
    pub hook_failures: u64,
    /// Stored messages whose latency was recorded.
    pub latency_count: u64,
    /// Submit-to-ack latency, median, microseconds.
    pub latency_p50_us: u64,
    /// 99th percentile, microseconds.
    pub latency_p99_us: u64,
    /// 99.9th percentile, microseconds.
    pub latency_p999_us: u64,
    /// Maximum, microseconds.
    pub latency_max_us: u64,
}

impl MetricsSnapshot {
    /// The snapshot in the Prometheus text format, each name prefixed with
    /// `prefix` (such as `"cs_"`), ready to serve at `/metrics`.
    pub fn to_prometheus(&self, prefix: &str) -> String {
        use std::fmt::Write;
        let counters = [
            (
                "accepted_total",
                "Commands the dispatcher took in.",
                self.accepted,
            ),
            (
                "degraded_total",
                "Commands that took the spill path.",
                self.degraded,
            ),
            (
                "shed_total",
                "Typing frames and read receipts dropped while a queue was long.",
                self.shed,
            ),
            (
                "refused_total",
                "Commands refused (overloaded or shutting down).",
                self.refused,
            ),
            ("persisted_total", "Messages stored.", self.persisted),
            (
                "duplicates_total",
                "Retries recognised by client_msg_id.",
                self.duplicates,
            ),
            (
                "rejected_total",
                "Commands rejected by the message path.",
                self.rejected,
            ),
            (
                "delivered_total",
                "Frames queued to connections.",
                self.delivered,
            ),
            (
                "slow_closed_total",
                "Connections closed as slow consumers.",
                self.slow_closed,
            ),
            ("resumed_total", "Resumes served.", self.resumed),
            (
                "gaps_total",
                "Holes found in the messages sent to a connection.",
                self.gaps,
            ),
            (
                "gap_repairs_total",
                "Replays that sent a connection its missing messages.",
                self.gap_repairs,
            ),
            (
                "bus_lost_total",
                "Times the bus reported envelopes possibly lost.",
                self.bus_lost,
            ),
            (
                "hook_timeouts_total",
                "Hook runs cut off by their timeout.",
                self.hook_timeouts,
            ),
            (
                "hook_failures_total",
                "Hook runs that failed or panicked.",
                self.hook_failures,
            ),
        ];
        let mut out = String::new();
        write_counters(&mut out, prefix, &counters);
        let name = "message_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {prefix}{name} Submit-to-ack latency of stored messages.\n# TYPE {prefix}{name} summary"
        );
        for (quantile, micros) in [
            ("0.5", self.latency_p50_us),
            ("0.99", self.latency_p99_us),
            ("0.999", self.latency_p999_us),
        ] {
            let _ = writeln!(
                out,
                "{prefix}{name}{{quantile=\"{quantile}\"}} {}",
                micros as f64 / 1e6
            );
        }
        let _ = writeln!(out, "{prefix}{name}_count {}", self.latency_count);
        out
    }
}

/// Appends `(name, help, value)` counters to `out` in the Prometheus text
/// format, each name prefixed with `prefix`.
pub(crate) fn write_counters(out: &mut String, prefix: &str, counters: &[(&str, &str, u64)]) {
    use std::fmt::Write;
    for (name, help, value) in counters {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP {prefix}{name} {help}\n# TYPE {prefix}{name} counter\n{prefix}{name} {value}"
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Zeroed counters.
    pub fn new() -> Self {
        // 1 µs to 1 hour at 3 significant digits: the bounds are constants
        // that hdrhistogram accepts, so this cannot fail.
        let histogram = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .unwrap_or_else(|e| unreachable!("constant histogram bounds are valid: {e}"));
        Self {
            accepted: AtomicU64::new(0),
            degraded: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            persisted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            slow_closed: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            gap_repairs: AtomicU64::new(0),
            bus_lost: AtomicU64::new(0),
            hook_timeouts: AtomicU64::new(0),
            hook_failures: AtomicU64::new(0),
            path_latency: Mutex::new(histogram),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.path_latency.lock().saturating_record(micros);
    }

    /// Copies every counter and the latency percentiles.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let h = self.path_latency.lock();
        MetricsSnapshot {
            accepted: get(&self.accepted),
            degraded: get(&self.degraded),
            shed: get(&self.shed),
            refused: get(&self.refused),
            persisted: get(&self.persisted),
            duplicates: get(&self.duplicates),
            rejected: get(&self.rejected),
            delivered: get(&self.delivered),
            slow_closed: get(&self.slow_closed),
            resumed: get(&self.resumed),
            gaps: get(&self.gaps),
            gap_repairs: get(&self.gap_repairs),
            bus_lost: get(&self.bus_lost),
            hook_timeouts: get(&self.hook_timeouts),
            hook_failures: get(&self.hook_failures),
            latency_count: h.len(),
            latency_p50_us: h.value_at_quantile(0.5),
            latency_p99_us: h.value_at_quantile(0.99),
            latency_p999_us: h.value_at_quantile(0.999),
            latency_max_us: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_every_counter_and_the_quantiles() {
        let metrics = Metrics::new();
        Metrics::bump(&metrics.persisted);
        Metrics::bump(&metrics.persisted);
        metrics.record_latency(Duration::from_millis(3));
        let text = metrics.snapshot().to_prometheus("cs_");
        assert!(
            text.contains("# TYPE cs_persisted_total counter\ncs_persisted_total 2\n"),
            "{text}"
        );
        assert!(text.contains("cs_refused_total 0\n"));
        assert!(
            text.contains("cs_message_latency_seconds{quantile=\"0.99\"} 0.003"),
            "{text}"
        );
        assert!(text.contains("cs_message_latency_seconds_count 1\n"));
        for counter in ["gaps", "gap_repairs", "bus_lost", "shed"] {
            assert!(
                text.contains(&format!(
                    "# TYPE cs_{counter}_total counter\ncs_{counter}_total 0\n"
                )),
                "{text}"
            );
        }
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 16);
    }
}
