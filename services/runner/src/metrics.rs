//! The runner's series: busy slots, and tasks' outcomes and durations by code.

use std::sync::Arc;

use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
use workhook_core::metrics::{latency_histogram, CounterFamily, HistogramFamily};

pub struct RunnerMetrics {
    pub registry: Arc<Registry>,
    pub slots_busy: Gauge,
    pub tasks_finished: CounterFamily,
    pub task_seconds: HistogramFamily,
}

impl RunnerMetrics {
    pub fn new() -> Self {
        let mut registry = workhook_core::metrics::registry();
        let slots_busy = Gauge::default();
        registry.register(
            "runner_slots_busy",
            "Slots of this runner running a worker",
            slots_busy.clone(),
        );
        let tasks_finished = CounterFamily::default();
        registry.register(
            "tasks_finished",
            "Attempts this runner finished, by code and status",
            tasks_finished.clone(),
        );
        let task_seconds = HistogramFamily::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "task_duration_seconds",
            "How long workers ran, by code",
            task_seconds.clone(),
        );
        Self {
            registry: Arc::new(registry),
            slots_busy,
            tasks_finished,
            task_seconds,
        }
    }

    pub fn finished(&self, code: &str, status: &str, seconds: f64) {
        self.tasks_finished
            .get_or_create(&vec![
                ("code", code.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
        self.task_seconds
            .get_or_create(&vec![("code", code.to_string())])
            .observe(seconds);
    }
}
