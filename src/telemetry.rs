//! The broker's metrics: recorded through the `metrics` facade wherever something happens, kept
//! by one Prometheus recorder per process, rendered at `GET /metrics` (admin). A leaf: every part
//! records with `metrics::counter!`/`histogram!`/`gauge!` and knows nothing of Prometheus.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets (seconds): 100 µs to 10 s.
const BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0];

/// Installs the process's recorder (once; later calls keep the first).
pub fn install() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().set_buckets(&BUCKETS).ok()?.build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).ok()?;
        Some(handle)
    });
}

/// The metrics in Prometheus's text format (`None` when no recorder is installed).
pub fn render() -> Option<String> {
    HANDLE.get().and_then(Option::as_ref).map(PrometheusHandle::render)
}

/// Seconds since `start`, for a histogram.
pub fn since(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64()
}
