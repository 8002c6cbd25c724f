//! `/metrics` in the Prometheus text format, through `prometheus-client`.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The server's metrics.
pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    jobs: Family<Vec<(String, String)>, Counter>,
    pub(crate) queued: Gauge,
    pub(crate) running: Gauge,
    duration: Histogram,
    engine_errors: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let jobs = Family::<Vec<(String, String)>, Counter>::default();
        let queued = Gauge::default();
        let running = Gauge::default();
        // 0.1 s to about 7 h.
        let duration = Histogram::new(exponential_buckets(0.1, 3.0, 12));
        let engine_errors = Counter::default();
        let mut registry = Registry::with_prefix("berth");
        registry.register("jobs", "Jobs finished, by outcome", jobs.clone());
        registry.register("jobs_queued", "Jobs waiting for a slot", queued.clone());
        registry.register("jobs_running", "Jobs running", running.clone());
        registry.register(
            "job_duration_seconds",
            "Wall time of finished jobs, from start to end",
            duration.clone(),
        );
        registry.register(
            "engine_errors",
            "Engine calls that failed (start, exec, stop, health)",
            engine_errors.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            jobs,
            queued,
            running,
            duration,
            engine_errors,
        }
    }

    pub(crate) fn job_finished(&self, outcome: &str, took: Option<Duration>) {
        self.jobs
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
        if let Some(took) = took {
            self.duration.observe(took.as_secs_f64());
        }
    }

    pub(crate) fn engine_error(&self) {
        self.engine_errors.inc();
    }

    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }
}
