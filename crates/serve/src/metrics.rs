//! Prometheus metrics, served as text at `GET /metrics`.

use prometheus::{
    exponential_buckets, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub ttft: Histogram,
    pub per_token: Histogram,
    pub prompt_tokens: IntCounter,
    pub generated_tokens: IntCounter,
    pub tokens_per_second: Gauge,
    pub queue_depth: IntGauge,
    pub batch_size: IntGauge,
    pub batch_sizes: Histogram,
    pub kv_blocks_used: IntGauge,
    pub kv_blocks_free: IntGauge,
    pub kv_blocks_cached: IntGauge,
    pub prompt_cached_tokens: IntCounter,
    pub preemptions: IntCounter,
    pub errors: IntCounterVec,
    pub cancelled: IntCounter,
    pub deadline_exceeded: IntCounter,
    pub rate_limited: IntCounterVec,
    pub drift_psi: Gauge,
    pub drift_js: Gauge,
    pub drift_window: IntGauge,
    pub model_info: GaugeVec,
    pub reloads: IntCounterVec,
    pub feedback: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    // Names are constants of this file and registered once: a clash is a bug.
    r.register(Box::new(m.clone())).expect("metric registered once");
    m
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| reg(&r, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"));
        let counter = |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("valid metric"));
        let gauge = |name: &str, help: &str| reg(&r, Gauge::new(name, help).expect("valid metric"));
        let int_gauge = |name: &str, help: &str| reg(&r, IntGauge::new(name, help).expect("valid metric"));
        let seconds = exponential_buckets(0.001, 2.0, 16).expect("valid buckets"); // 1 ms … 33 s
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            reg(&r, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric"))
        };
        Self {
            requests: counter_vec("forja_requests_total", "HTTP requests by route and status code.", &["route", "status"]),
            latency: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("forja_request_duration_seconds", "Request latency by route (streams: until the last byte).")
                        .buckets(seconds.clone()),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            ttft: histogram("forja_time_to_first_token_seconds", "From a request's arrival to its first generated token.", seconds.clone()),
            per_token: histogram(
                "forja_time_per_output_token_seconds",
                "Mean time between generated tokens of a sequence.",
                exponential_buckets(0.0002, 2.0, 14).expect("valid buckets"),
            ),
            prompt_tokens: counter("forja_prompt_tokens_total", "Prompt tokens accepted."),
            generated_tokens: counter("forja_generated_tokens_total", "Tokens generated."),
            tokens_per_second: gauge("forja_tokens_per_second", "Generated tokens per second over the last few seconds."),
            queue_depth: int_gauge("forja_queue_depth", "Sequences waiting for a batch slot."),
            batch_size: int_gauge("forja_batch_size", "Sequences in the running batch."),
            batch_sizes: histogram(
                "forja_batch_size_per_step",
                "Sequences per decoding step.",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
            ),
            kv_blocks_used: int_gauge("forja_kv_blocks_used", "KV cache blocks held by sequences."),
            kv_blocks_free: int_gauge("forja_kv_blocks_free", "KV cache blocks a sequence can be given (empty or idle cached)."),
            kv_blocks_cached: int_gauge(
                "forja_kv_blocks_cached",
                "Free KV cache blocks that keep a prefix for later requests (evicted least recently used first).",
            ),
            prompt_cached_tokens: counter(
                "forja_prompt_cached_tokens_total",
                "Tokens read from the prefix cache at admission instead of computed (prompts; a preempted sequence's generated tokens too).",
            ),
            preemptions: counter("forja_preemptions_total", "Sequences preempted for lack of KV blocks (recomputed when readmitted)."),
            errors: counter_vec("forja_errors_total", "Requests answered with an error, by error type.", &["type"]),
            cancelled: counter("forja_cancelled_total", "Sequences dropped because their client went away."),
            deadline_exceeded: counter("forja_deadline_exceeded_total", "Sequences cut at their deadline."),
            rate_limited: counter_vec("forja_rate_limited_total", "Requests refused by a per-key limit, by limit.", &["limit"]),
            drift_psi: gauge("forja_drift_psi", "Population stability index of recent prompt tokens against the training tokens."),
            drift_js: gauge(
                "forja_drift_js_divergence",
                "Jensen-Shannon divergence (bits) of recent prompt tokens against the training tokens.",
            ),
            drift_window: int_gauge("forja_drift_window_tokens", "Prompt tokens in the drift window."),
            model_info: reg(
                &r,
                GaugeVec::new(Opts::new("forja_model_info", "The served model (1) by id and hash."), &["id", "hash"])
                    .expect("valid metric"),
            ),
            reloads: counter_vec("forja_reloads_total", "Model reloads by outcome.", &["outcome"]),
            feedback: counter_vec("forja_feedback_total", "Feedback records by kind.", &["kind"]),
            registry: r,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Writing into a Vec cannot fail; an encoding error would be a bug.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
