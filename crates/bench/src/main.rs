//! workhook-bench: drives a running workhook stack over loopback and measures it.
//!
//! `workhook-bench e2e` fires N webhooks at one code (a no-op worker), records each task id and
//! the moment its webhook was sent, waits until every task has finished, then reads the tasks back
//! and prints completed tasks/s and webhook-to-start latency. `scripts/bench` runs the whole
//! benchmark (ceiling, ingress, dedup, end to end, RSS); see docs/BENCHMARKS.md.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::StreamExt;
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "workhook-bench",
    version,
    about = "Measures a running workhook stack"
)]
enum Cli {
    /// End to end: webhooks -> completed tasks with a no-op worker.
    E2e(E2e),
}

#[derive(Debug, clap::Args)]
struct E2e {
    /// The ingress, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "WORKHOOK_URL")]
    url: String,
    #[arg(long, env = "WORKHOOK_PROJECT_ID")]
    project: String,
    #[arg(long, env = "WORKHOOK_TOKEN", hide_env_values = true)]
    token: String,
    /// The code the webhooks queue (its tasks must all come from this run: use a fresh code).
    #[arg(long, default_value = "noop")]
    code: String,
    /// Webhooks to fire (at most 10,000: the task list pages 100 at a time, page <= 100).
    #[arg(long, default_value_t = 5000)]
    count: usize,
    /// Webhooks in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Webhooks per second, paced evenly (0: as fast as the concurrency allows). A rate the stack
    /// keeps up with measures latency without a backlog.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Size of each webhook's JSON body in bytes.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Give up when the tasks have not all finished after this many seconds.
    #[arg(long, default_value_t = 180)]
    timeout_secs: u64,
    /// Print progress while waiting.
    #[arg(long)]
    verbose: bool,
}

/// What the benchmark needs of a task.
#[derive(Debug, Deserialize)]
struct Task {
    id: String,
    status: String,
    start_time: String,
    end_time: String,
}

#[derive(Debug, Deserialize)]
struct TaskList {
    tasks: Vec<Task>,
}

#[derive(Debug, Deserialize)]
struct Queued {
    id: String,
}

const FINISHED_STATUSES: [&str; 5] = ["complete", "error", "timeout", "cancelled", "killed"];
const EVERY_STATUS: &str =
    "queued=1&preparing=1&running=1&complete=1&error=1&timeout=1&cancelled=1&killed=1";
const PER_PAGE: usize = 100;
const MAX_PAGE: usize = 100;

fn unix_ms_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// RFC 3339 (milliseconds) to Unix milliseconds; None for IronWorker's unset time.
fn parse_ms(s: &str) -> Option<f64> {
    if s.starts_with("0001-") {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis() as f64)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// GETs `path` (under the project) with the project's token and decodes the JSON answer.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let r = self
            .http
            .get(&url)
            .header("Authorization", format!("OAuth {}", self.token))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("GET {url}: {}", r.status());
        }
        Ok(r.json().await?)
    }

    async fn list(&self, code: &str, filter: &str, page: usize) -> anyhow::Result<Vec<Task>> {
        let path = format!("/tasks?code_name={code}&{filter}&per_page={PER_PAGE}&page={page}");
        Ok(self.get_json::<TaskList>(&path).await?.tasks)
    }

    async fn get(&self, id: &str) -> anyhow::Result<Task> {
        self.get_json(&format!("/tasks/{id}")).await
    }

    /// The id of the code named `code`.
    async fn code_id(&self, code: &str) -> anyhow::Result<String> {
        #[derive(Deserialize)]
        struct Code {
            id: String,
            name: String,
        }
        #[derive(Deserialize)]
        struct Codes {
            codes: Vec<Code>,
        }
        self.get_json::<Codes>("/codes?per_page=100")
            .await?
            .codes
            .into_iter()
            .find(|c| c.name == code)
            .map(|c| c.id)
            .with_context(|| format!("no code named {code}"))
    }

    /// How many of the code's tasks have finished, from the code's stats: one count per
    /// status, cheap next to the stack under test (a list of finished tasks, paged, costs the
    /// registry and Postgres more with every page and would weigh on the run it measures).
    async fn finished(&self, code_id: &str) -> anyhow::Result<usize> {
        let counts: HashMap<String, u64> =
            self.get_json(&format!("/codes/{code_id}/stats")).await?;
        Ok(FINISHED_STATUSES
            .iter()
            .map(|s| counts.get(*s).copied().unwrap_or(0) as usize)
            .sum())
    }
}

async fn e2e(args: E2e) -> anyhow::Result<()> {
    if args.count == 0 || args.count > PER_PAGE * (MAX_PAGE + 1) {
        bail!("--count must be 1-{}", PER_PAGE * (MAX_PAGE + 1));
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = format!(
        "{}/2/projects/{}",
        args.url.trim_end_matches('/'),
        args.project
    );
    let api = Api {
        http: http.clone(),
        base: base.clone(),
        token: args.token.clone(),
    };
    let hook = format!(
        "{base}/tasks/webhook?code_name={}&oauth={}",
        args.code, args.token
    );
    let pad = "x".repeat(
        args.body_bytes
            .saturating_sub(r#"{"event":"push","data":""}"#.len()),
    );
    let body = bytes::Bytes::from(format!(r#"{{"event":"push","data":"{pad}"}}"#));

    // Fire.
    let fire_clock = Instant::now();
    let pace = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let start = tokio::time::Instant::now();
    // Each webhook's task id, when it was sent (Unix ms) and how long its answer took (ms).
    let results: Vec<anyhow::Result<(String, f64, f64)>> =
        futures_util::stream::iter(0..args.count)
            .map(|i| {
                let http = http.clone();
                let hook = hook.clone();
                let body = body.clone();
                async move {
                    if let Some(pace) = pace {
                        tokio::time::sleep_until(start + pace * i as u32).await;
                    }
                    let sent = unix_ms_f64(SystemTime::now());
                    let clock = Instant::now();
                    let r = http
                        .post(&hook)
                        .header("Content-Type", "application/json")
                        .body(body)
                        .send()
                        .await?;
                    let status = r.status();
                    if !status.is_success() {
                        bail!(
                            "webhook answered {status}: {}",
                            r.text().await.unwrap_or_default()
                        );
                    }
                    let id = r.json::<Queued>().await?.id;
                    Ok((id, sent, clock.elapsed().as_secs_f64() * 1000.0))
                }
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
    let fire_secs = fire_clock.elapsed().as_secs_f64();
    let mut sent: HashMap<String, f64> = HashMap::with_capacity(args.count);
    let mut answer_ms = Vec::with_capacity(args.count);
    let mut failed = 0usize;
    let mut first_error = None;
    for r in results {
        match r {
            Ok((id, at, took)) => {
                sent.insert(id, at);
                answer_ms.push(took);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let accepted = sent.len();
    let paced = if args.rate > 0.0 {
        format!(", paced at {}/s", args.rate)
    } else {
        String::new()
    };
    println!(
        "e2e: fired {} webhooks at concurrency {}{paced} in {:.3} s ({:.0}/s accepted), {} failed",
        args.count,
        args.concurrency,
        fire_secs,
        accepted as f64 / fire_secs,
        failed
    );
    if let Some(e) = first_error {
        eprintln!("e2e: first failure: {e:#}");
    }
    if accepted == 0 {
        bail!("no webhook was accepted");
    }

    // Wait until every task has finished; one cheap list call per poll.
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut last_print = Instant::now();
    let code_id = api.code_id(&args.code).await?;
    loop {
        let n = api.finished(&code_id).await?;
        if n >= accepted {
            // scripts/bench ends its CPU window here: reading every task back is the client's
            // work, not the stack's.
            eprintln!("e2e: every task finished; reading them back");
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {n} of {accepted} tasks finished within {} s",
                args.timeout_secs
            );
        }
        if args.verbose && last_print.elapsed() > Duration::from_secs(2) {
            eprintln!("e2e: {n}/{accepted} finished");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wait_secs = fire_clock.elapsed().as_secs_f64();

    // Read every task back (all statuses), then fetch one by one any the pages missed.
    let mut tasks: HashMap<String, Task> = HashMap::with_capacity(accepted);
    for page in 0..=((accepted - 1) / PER_PAGE) {
        for t in api.list(&args.code, EVERY_STATUS, page).await? {
            tasks.insert(t.id.clone(), t);
        }
    }
    let missing: Vec<String> = sent
        .keys()
        .filter(|id| !tasks.contains_key(*id))
        .cloned()
        .collect();
    for id in &missing {
        let t = api.get(id).await.with_context(|| format!("task {id}"))?;
        tasks.insert(id.clone(), t);
    }
    let foreign = tasks.keys().filter(|id| !sent.contains_key(*id)).count();
    if foreign > 0 {
        bail!(
            "code {} has {foreign} tasks this run did not queue: use a fresh code",
            args.code
        );
    }

    let mut statuses: HashMap<&str, usize> = HashMap::new();
    let mut to_start = Vec::with_capacity(accepted);
    let mut to_end = Vec::with_capacity(accepted);
    let mut run_ms = Vec::with_capacity(accepted);
    let first_sent = sent.values().cloned().fold(f64::INFINITY, f64::min);
    let mut last_end = f64::NEG_INFINITY;
    let mut first_start = f64::INFINITY;
    for (id, at) in &sent {
        let t = &tasks[id];
        *statuses.entry(t.status.as_str()).or_default() += 1;
        let start = parse_ms(&t.start_time);
        let end = parse_ms(&t.end_time);
        if let Some(s) = start {
            to_start.push(s - at);
            first_start = first_start.min(s);
        }
        if let Some(e) = end {
            to_end.push(e - at);
            last_end = last_end.max(e);
        }
        if let (Some(s), Some(e)) = (start, end) {
            run_ms.push(e - s);
        }
    }
    let complete = statuses.get("complete").copied().unwrap_or(0);
    for v in [&mut to_start, &mut to_end, &mut run_ms, &mut answer_ms] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    let span_s = (last_end - first_sent) / 1000.0;
    let tasks_per_s = complete as f64 / span_s;
    let mut statuses: Vec<_> = statuses.into_iter().collect();
    statuses.sort();
    let statuses: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}={n}")).collect();
    println!(
        "e2e: all {accepted} finished {:.3} s after the first webhook ({}); polled for {:.1} s",
        span_s,
        statuses.join(" "),
        wait_secs
    );
    println!(
        "e2e: {tasks_per_s:.0} completed tasks/s (first webhook sent -> last task's end_time)"
    );
    println!(
        "e2e: webhook answered (200)  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(&answer_ms, 50.0),
        percentile(&answer_ms, 99.0),
        percentile(&answer_ms, 100.0)
    );
    println!(
        "e2e: webhook -> start_time  p50 {:.0} ms  p90 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
        percentile(&to_start, 50.0),
        percentile(&to_start, 90.0),
        percentile(&to_start, 99.0),
        percentile(&to_start, 100.0)
    );
    println!(
        "e2e: webhook -> end_time    p50 {:.0} ms  p99 {:.0} ms;  start_time -> end_time p50 {:.0} ms  p99 {:.0} ms",
        percentile(&to_end, 50.0),
        percentile(&to_end, 99.0),
        percentile(&run_ms, 50.0),
        percentile(&run_ms, 99.0)
    );
    println!(
        "E2E tasks={accepted} complete={complete} failed_webhooks={failed} span_s={span_s:.3} tasks_per_s={tasks_per_s:.1} \
         fire_per_s={:.1} start_p50_ms={:.1} start_p90_ms={:.1} start_p99_ms={:.1} start_max_ms={:.1} \
         end_p50_ms={:.1} end_p99_ms={:.1} run_p50_ms={:.1} run_p99_ms={:.1} first_start_after_ms={:.1} \
         answer_p50_ms={:.1} answer_p99_ms={:.1} answer_max_ms={:.1}",
        accepted as f64 / fire_secs,
        percentile(&to_start, 50.0),
        percentile(&to_start, 90.0),
        percentile(&to_start, 99.0),
        percentile(&to_start, 100.0),
        percentile(&to_end, 50.0),
        percentile(&to_end, 99.0),
        percentile(&run_ms, 50.0),
        percentile(&run_ms, 99.0),
        first_start - first_sent,
        percentile(&answer_ms, 50.0),
        percentile(&answer_ms, 99.0),
        percentile(&answer_ms, 100.0),
    );
    if complete != accepted || failed > 0 {
        bail!(
            "{} of {accepted} tasks did not complete, {failed} webhooks failed",
            accepted - complete
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::E2e(args) => e2e(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.9), 7.0);
    }

    #[test]
    fn times_parse_and_the_unset_time_is_none() {
        assert_eq!(parse_ms("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_ms("1970-01-01T00:00:01.250Z"), Some(1250.0));
    }
}
