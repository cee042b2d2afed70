//! `GET /metrics`: the engine, jobs, pools, store and web server in the
//! OpenMetrics text format, written with `prometheus-client` (label values
//! escaped by it), with a histogram of request latencies per route.

use std::time::Duration;

use axum::extract::State as AxState;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::pages::status_text;
use crate::State;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
    status: u16,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// What the web server measures about itself.
pub(crate) struct Http {
    requests: Family<Route, Histogram, fn() -> Histogram>,
}

impl Default for Http {
    fn default() -> Self {
        Http { requests: Family::new_with_constructor(latency_histogram) }
    }
}

impl Http {
    /// Records one request to `route` answered with `status` after `took`.
    pub(crate) fn observe(&self, route: &str, status: StatusCode, took: Duration) {
        self.requests
            .get_or_create(&Route { route: route.to_owned(), status: status.as_u16() })
            .observe(took.as_secs_f64());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// A label value from outside (a pool's name): escaped as the text format
/// requires (`prometheus-client` writes label values as they are).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Name(String);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    pool: Name,
    priority: String,
}

fn gauge(value: i64) -> Gauge {
    let g = Gauge::default();
    g.set(value);
    g
}

/// A counter family a program added ([`crate::Site::counter`]).
pub(crate) struct Extra {
    pub(crate) name: String,
    pub(crate) help: String,
    pub(crate) read: Box<dyn Fn() -> Vec<crate::CounterSample> + Send + Sync>,
}

pub(crate) async fn metrics(AxState(state): AxState<State>) -> Response {
    let mut registry = Registry::with_prefix("deployer");
    for extra in &state.counters {
        let family: Family<Vec<(String, String)>, Counter> = Family::default();
        for (labels, n) in (extra.read)() {
            family.get_or_create(&labels).inc_by(n);
        }
        registry.register(extra.name.clone(), extra.help.clone(), family);
    }

    let stages: Family<StateLabel, Gauge> = Family::default();
    let s = state.engine.stats();
    for (name, n) in [
        ("ok", s.ok),
        ("ready", s.ready),
        ("running", s.running),
        ("waiting_for_confirmation", s.waiting_for_confirmation),
        ("failed", s.failed),
        ("blocked", s.blocked),
    ] {
        stages.get_or_create(&StateLabel { state: name.into() }).set(n as i64);
    }
    registry.register("pipeline_stages", "Pipeline stages by state", stages);

    let jobs: Family<StateLabel, Gauge> = Family::default();
    let active = state.ctx.jobs.active();
    for status in ["ready to start", "waiting for confirmation", "queued for a pool", "running", "cancelling"] {
        let n = active.iter().filter(|j| status_text(j.status, j.cancelled.is_some()).0 == status).count();
        jobs.get_or_create(&StateLabel { state: status.replace(' ', "_") }).set(n as i64);
    }
    registry.register("jobs", "Active jobs by status", jobs);

    let in_use: Family<PoolLabel, Gauge> = Family::default();
    let capacity: Family<PoolLabel, Gauge> = Family::default();
    let queued: Family<QueueLabel, Gauge> = Family::default();
    let wait_seconds: Family<PoolLabel, Counter<f64>> = Family::default();
    let served: Family<PoolLabel, Counter> = Family::default();
    for p in state.ctx.jobs.pools() {
        let pool = PoolLabel { pool: Name(p.label().to_owned()) };
        in_use.get_or_create(&pool).set(p.in_use() as i64);
        capacity.get_or_create(&pool).set(p.capacity() as i64);
        let (high, low) = p.queue_lengths();
        for (priority, n) in [("high", high), ("low", low)] {
            queued.get_or_create(&QueueLabel { pool: pool.pool.clone(), priority: priority.into() }).set(n as i64);
        }
        let (waited, n) = p.wait_time();
        wait_seconds.get_or_create(&pool).inc_by(waited.as_secs_f64());
        served.get_or_create(&pool).inc_by(n);
    }
    registry.register("pool_in_use", "Pool slots in use", in_use);
    registry.register("pool_capacity", "Pool slots", capacity);
    registry.register("pool_queued", "Jobs waiting for a pool slot", queued);
    registry.register("pool_wait_seconds", "Time jobs waited for pool slots", wait_seconds);
    registry.register("pool_served", "Pool slots handed out", served);

    let rows = state.ctx.store.count().await.unwrap_or(-1);
    registry.register("history_rows", "Builds and publishes recorded in the store", gauge(rows));
    registry.register("engine_nodes", "Live runtime nodes", gauge(state.engine.node_count() as i64));
    let deployer_core::Timings { steps, last_step: last, total } = state.engine.timings();
    let evaluation: Counter<f64> = Counter::default();
    evaluation.inc_by(total.as_secs_f64());
    registry.register("evaluation_seconds", "Time spent evaluating the pipeline", evaluation);
    let step_count: Counter = Counter::default();
    step_count.inc_by(steps);
    registry.register("evaluation_steps", "Evaluation steps", step_count);
    let last_step: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    last_step.set(last.as_secs_f64());
    registry.register("last_evaluation_seconds", "Duration of the last evaluation step", last_step);
    registry.register("log_streams", "Live log streams open", gauge(state.streams.open() as i64));
    registry.register(
        "http_request_duration_seconds",
        "Time to answer HTTP requests, by route",
        state.metrics.requests.clone(),
    );

    let mut out = String::new();
    if let Err(e) = encode(&mut out, &registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the metrics: {e}")).into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}
