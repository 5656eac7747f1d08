//! `workhook`: the command line for a workhook installation.
#![forbid(unsafe_code)]

mod api;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use workhook_cli::{is_final, payload_arg, table, webhook_url, IronFile, Settings, STATUSES};
use workhook_proto::{self as pb, registry_client::RegistryClient};

use api::Api;

/// Exit code when a waited-for task did not complete.
const EXIT_TASK_FAILED: i32 = 3;

#[derive(Parser)]
#[command(
    name = "workhook",
    version,
    about = "Run code whenever a webhook fires: the workhook command line",
    after_help = "Examples:
  workhook project create my-app --json
  workhook code upload ./worker --name hello --command 'sh run.sh'
  workhook webhook-url hello
  workhook task queue hello --payload '{\"x\":1}' --wait
  workhook task list --code hello --status error
  workhook task log 6b0d6e7ef1fba636803bdcf5 --follow
  workhook schedule create hello --cron '0 */5 * * * *'
  workhook code list --json

Settings come from flags, then WORKHOOK_* variables, then the IRON_* variables, then an iron.json
in the current directory (project_id, token, host, port, protocol), as IronWorker's tools use.
Exit codes: 0 ok, 1 error, 2 usage, 3 a waited-for task did not complete."
)]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
    /// Print the API's JSON answer (one line) instead of tables
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct SettingsArgs {
    /// The ingress's URL [env: WORKHOOK_URL, or IRON_HOST/IRON_PORT/IRON_PROTOCOL]
    #[arg(long, global = true)]
    url: Option<String>,
    /// Base of printed webhook URLs, as third parties reach the ingress [env: WORKHOOK_PUBLIC_URL]
    #[arg(long, global = true)]
    public_url: Option<String>,
    /// Project id [env: WORKHOOK_PROJECT_ID or IRON_PROJECT_ID]
    #[arg(long, global = true)]
    project_id: Option<String>,
    /// Project token [env: WORKHOOK_TOKEN or IRON_TOKEN]
    #[arg(long, global = true)]
    token: Option<String>,
    /// The registry's gRPC URL, for admin commands [env: WORKHOOK_REGISTRY_URL]
    #[arg(long, global = true)]
    registry_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Projects (admin: needs WORKHOOK_ADMIN_TOKEN)
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Code packages: upload, list, inspect, download, pause, delete
    #[command(
        subcommand,
        after_help = "Examples:
  workhook code upload ./worker --name hello --command 'sh run.sh' --env KEY=VALUE
  workhook code list
  workhook code revisions hello
  workhook code download hello --revision 2 -o hello.zip
  workhook code pause hello && workhook code resume hello"
    )]
    Code(CodeCommand),
    /// Tasks: queue (and wait), list, inspect, logs, cancel, retry
    #[command(
        subcommand,
        after_help = "Examples:
  workhook task queue hello --payload @payload.json --wait
  workhook task list --code hello --status error --status timeout
  workhook task info 6b0d6e7ef1fba636803bdcf5
  workhook task log 6b0d6e7ef1fba636803bdcf5 --follow
  workhook task retry 6b0d6e7ef1fba636803bdcf5 --delay 30"
    )]
    Task(TaskCommand),
    /// Schedules: run a code every N seconds or on a cron expression
    #[command(
        subcommand,
        after_help = "Examples:
  workhook schedule create hello --run-every 3600 --payload '{}'
  workhook schedule create hello --cron '0 0 9 * * Mon-Fri' --end-at 2030-01-01T00:00:00Z
  workhook schedule list
  workhook schedule cancel 6b0d6e7ef1fba636803bdcf5"
    )]
    Schedule(ScheduleCommand),
    /// Print the URL to paste into a third party so that its webhooks run CODE_NAME. It carries
    /// a new webhook token that can only queue CODE_NAME's tasks (revocable); --project-token
    /// prints the old-style URL with the project token instead.
    #[command(after_help = "Examples:
  workhook webhook-url hello
  curl -X POST -d '{\"hello\":\"world\"}' \"$(workhook webhook-url hello)\"")]
    WebhookUrl {
        code_name: String,
        /// Put the project token in the URL (as `iron_worker webhook` did) instead of a new
        /// webhook token
        #[arg(long)]
        project_token: bool,
    },
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// Create a project and print its id and a new token (shown only once)
    Create { name: String },
}

#[derive(Subcommand)]
enum CodeCommand {
    /// Upload a directory or a zip as a new code (or a new revision of one)
    Upload {
        /// A directory (zipped for you) or a .zip file
        path: PathBuf,
        #[arg(long)]
        name: String,
        /// What runs the worker, from the package's root, e.g. 'sh run.sh' or 'python3 w.py'
        #[arg(long)]
        command: String,
        /// A file whose text the worker gets as its config (CONFIG_FILE)
        #[arg(long)]
        config: Option<PathBuf>,
        /// An environment variable for the worker, KEY=VALUE (repeatable)
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        #[arg(long)]
        max_concurrency: Option<u32>,
        #[arg(long)]
        retries: Option<u32>,
        #[arg(long)]
        retries_delay: Option<u32>,
    },
    /// List the project's codes
    List,
    /// Show a code
    Info { code: String },
    /// List a code's revisions, newest first
    Revisions { code: String },
    /// Download a code's package (a zip)
    Download {
        code: String,
        /// The revision (default: the latest)
        #[arg(long)]
        revision: Option<u32>,
        /// Where to write it ("-" for stdout; default: NAME_REV.zip here)
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Delete a code (its queued tasks end as errors)
    Delete { code: String },
    /// Hold the code's tasks in the queue (runners defer them)
    Pause { code: String },
    /// Let the code's held tasks run again
    Resume { code: String },
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Queue a task of CODE; prints its id
    Queue {
        code: String,
        /// The payload: text (usually JSON), or @FILE for a file's text
        #[arg(long)]
        payload: Option<String>,
        /// 0, 1 or 2
        #[arg(long)]
        priority: Option<u8>,
        /// Seconds to wait before it may run
        #[arg(long)]
        delay: Option<u32>,
        /// Seconds it may run (at most 3600)
        #[arg(long)]
        timeout: Option<u32>,
        #[arg(long)]
        label: Option<String>,
        /// Wait until the task ends; exit 3 unless it completes
        #[arg(long)]
        wait: bool,
    },
    /// List tasks, newest first
    List {
        /// Only tasks of this code
        #[arg(long)]
        code: Option<String>,
        /// Only tasks in this status (repeatable)
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(STATUSES))]
        status: Vec<String>,
        #[arg(long)]
        page: Option<u32>,
        #[arg(long)]
        per_page: Option<u32>,
    },
    /// Show a task
    Info { id: String },
    /// Print a task's log (stdout and stderr)
    Log {
        id: String,
        /// Keep printing new output until the task ends
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a queued or running task
    Cancel { id: String },
    /// Queue a finished task again (same payload and revision); prints the new id
    Retry {
        id: String,
        /// Seconds to wait before it may run
        #[arg(long)]
        delay: Option<u32>,
    },
}

#[derive(Subcommand)]
enum ScheduleCommand {
    /// Schedule runs of CODE; prints the schedule's id
    #[command(group(clap::ArgGroup::new("when").required(true).args(["run_every", "cron"])))]
    Create {
        code: String,
        /// Seconds between runs (at least 60)
        #[arg(long)]
        run_every: Option<u32>,
        /// A cron expression with seconds, e.g. '0 */5 * * * *'
        #[arg(long)]
        cron: Option<String>,
        /// First run no earlier than this (RFC 3339)
        #[arg(long)]
        start_at: Option<String>,
        /// No runs after this (RFC 3339)
        #[arg(long)]
        end_at: Option<String>,
        /// Stop after this many runs
        #[arg(long)]
        run_times: Option<u32>,
        /// The payload: text, or @FILE for a file's text
        #[arg(long)]
        payload: Option<String>,
        #[arg(long)]
        priority: Option<u8>,
        #[arg(long)]
        timeout: Option<u32>,
        #[arg(long)]
        label: Option<String>,
    },
    /// List the project's schedules
    List,
    /// Show a schedule
    Info { id: String },
    /// Cancel a schedule (no further runs)
    Cancel { id: String },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn settings(args: &SettingsArgs) -> anyhow::Result<Settings> {
    let file = IronFile::read(Path::new("iron.json"))?;
    let mut s = Settings::from_env_and_file(|k| std::env::var(k).ok(), file.as_ref());
    if let Some(v) = &args.url {
        s.url = v.trim_end_matches('/').to_string();
    }
    if let Some(v) = &args.public_url {
        s.public_url = Some(v.clone());
    }
    if let Some(v) = &args.project_id {
        s.project_id = Some(v.clone());
    }
    if let Some(v) = &args.token {
        s.token = Some(v.clone());
    }
    if let Some(v) = &args.registry_url {
        s.registry_url = v.clone();
    }
    Ok(s)
}

/// Runs the command; the exit code on success.
async fn run(cli: Cli) -> anyhow::Result<i32> {
    let s = settings(&cli.settings)?;
    let json = cli.json;
    match cli.command {
        Command::Project(ProjectCommand::Create { name }) => create_project(&s, name, json).await?,
        Command::WebhookUrl {
            code_name,
            project_token,
        } => {
            let url = if project_token {
                webhook_url(&s, &code_name)?
            } else {
                scoped_webhook_url(&s, &code_name).await?
            };
            if json {
                println!("{}", json!({ "url": url }));
            } else {
                println!("{url}");
            }
        }
        Command::Code(c) => code(&Api::new(&s)?, c, json).await?,
        Command::Task(c) => return task(&Api::new(&s)?, c, json).await,
        Command::Schedule(c) => schedule(&Api::new(&s)?, c, json).await?,
    }
    Ok(0)
}

async fn create_project(s: &Settings, name: String, json: bool) -> anyhow::Result<()> {
    let admin = std::env::var("WORKHOOK_ADMIN_TOKEN")
        .context("set WORKHOOK_ADMIN_TOKEN to the registry's admin token")?;
    let mut client = RegistryClient::connect(s.registry_url.clone())
        .await
        .with_context(|| {
            format!(
                "cannot reach the registry at {} (set WORKHOOK_REGISTRY_URL)",
                s.registry_url
            )
        })?;
    let mut request = tonic::Request::new(pb::CreateProjectRequest { name });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {admin}").parse()?);
    let p = client
        .create_project(request)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?
        .into_inner();
    if json {
        println!("{}", json!({"id": p.id, "name": p.name, "token": p.token}));
    } else {
        println!(
            "project  {}\nname     {}\ntoken    {}",
            p.id, p.name, p.token
        );
        eprintln!(
            "\nKeep the token: it is shown only now. For the other commands:\n  export WORKHOOK_PROJECT_ID={} WORKHOOK_TOKEN={}",
            p.id, p.token
        );
    }
    Ok(())
}

/// A JSON field as text for a table cell ("-" when absent or empty).
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() || s == "0001-01-01T00:00:00Z" => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_table(header: &[&str], fields: &[&str], items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| fields.iter().map(|f| cell(&item[*f])).collect())
        .collect();
    print!("{}", table(header, &rows));
}

/// An object's fields, one `key  value` line each (`fields` first, in order, then the rest).
fn print_object(v: &Value, fields: &[&str]) {
    let Some(map) = v.as_object() else {
        println!("{v}");
        return;
    };
    let mut rows: Vec<Vec<String>> = fields
        .iter()
        .filter(|f| map.contains_key(**f))
        .map(|f| vec![f.to_string(), cell(&map[*f])])
        .collect();
    for (k, val) in map {
        if !fields.contains(&k.as_str()) {
            rows.push(vec![k.clone(), cell(val)]);
        }
    }
    let text = table(&["", ""], &rows);
    print!("{}", text.split_once('\n').map(|(_, r)| r).unwrap_or(""));
}

/// Prints the answer as JSON, or its `msg` after `what`.
fn print_msg(json: bool, what: &str, body: &Value) {
    if json {
        println!("{body}");
    } else {
        println!("{what}: {}", body["msg"].as_str().unwrap_or("done"));
    }
}

async fn code(api: &Api, command: CodeCommand, json: bool) -> anyhow::Result<()> {
    match command {
        CodeCommand::Upload {
            path,
            name,
            command,
            config,
            env,
            max_concurrency,
            retries,
            retries_delay,
        } => {
            let package = package_bytes(&path)?;
            let mut env_vars = HashMap::new();
            for pair in env {
                let (k, v) = pair
                    .split_once('=')
                    .with_context(|| format!("--env {pair:?} must be KEY=VALUE"))?;
                env_vars.insert(k.to_string(), v.to_string());
            }
            let mut data = json!({"name": name, "command": command, "env_vars": env_vars});
            if let Some(file) = config {
                data["config"] = Value::String(
                    std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?,
                );
            }
            if let Some(n) = max_concurrency {
                data["max_concurrency"] = json!(n);
            }
            if let Some(n) = retries {
                data["retries"] = json!(n);
            }
            if let Some(n) = retries_delay {
                data["retries_delay"] = json!(n);
            }
            let total = package.len() as u64;
            let form = reqwest::multipart::Form::new()
                .text("data", data.to_string())
                .part(
                    "file",
                    reqwest::multipart::Part::stream_with_length(upload_progress(package), total)
                        .file_name("package.zip")
                        .mime_str("application/zip")?,
                );
            let body = api.post_form("/codes", form).await?;
            eprintln!();
            if json {
                println!("{body}");
            } else {
                println!(
                    "code {} uploaded as {} (revision {})",
                    name,
                    body["id"].as_str().unwrap_or(""),
                    body["rev"]
                );
            }
        }
        CodeCommand::List => {
            let mut codes = Vec::new();
            for page in 0..=100 {
                let body = api.get(&format!("/codes?per_page=100&page={page}")).await?;
                let batch = body["codes"].as_array().cloned().unwrap_or_default();
                let done = batch.len() < 100;
                codes.extend(batch);
                if done {
                    break;
                }
            }
            if json {
                println!("{}", json!({ "codes": codes }));
            } else {
                print_table(
                    &["ID", "NAME", "REV", "COMMAND", "UPDATED"],
                    &["id", "name", "rev", "command", "latest_change"],
                    &codes,
                );
            }
        }
        CodeCommand::Info { code } => {
            let id = api.code_id(&code).await?;
            let body = api.get(&format!("/codes/{id}")).await?;
            if json {
                println!("{body}");
            } else {
                print_object(
                    &body,
                    &[
                        "id",
                        "name",
                        "rev",
                        "command",
                        "created_at",
                        "latest_change",
                        "package_size",
                        "latest_checksum",
                    ],
                );
            }
        }
        CodeCommand::Revisions { code } => {
            let id = api.code_id(&code).await?;
            let body = api.get(&format!("/codes/{id}/revisions")).await?;
            if json {
                println!("{body}");
            } else {
                let revisions = body["revisions"].as_array().cloned().unwrap_or_default();
                print_table(
                    &["REV", "ID", "COMMAND", "SIZE", "CREATED"],
                    &["rev", "id", "command", "package_size", "latest_change"],
                    &revisions,
                );
            }
        }
        CodeCommand::Download {
            code,
            revision,
            output,
        } => {
            let id = api.code_id(&code).await?;
            let path = match revision {
                Some(r) => format!("/codes/{id}/download?revision={r}"),
                None => format!("/codes/{id}/download"),
            };
            let download = api.get_bytes(&path).await?;
            let size = download.bytes.len();
            if output.as_deref() == Some(Path::new("-")) {
                std::io::stdout().write_all(&download.bytes)?;
                return Ok(());
            }
            let file = output.unwrap_or_else(|| {
                PathBuf::from(download.file_name.unwrap_or_else(|| format!("{code}.zip")))
            });
            std::fs::write(&file, &download.bytes)
                .with_context(|| format!("writing {}", file.display()))?;
            if json {
                println!("{}", json!({"file": file, "bytes": size}));
            } else {
                println!("wrote {} ({size} bytes)", file.display());
            }
        }
        CodeCommand::Delete { code } => {
            let id = api.code_id(&code).await?;
            let body = api.delete(&format!("/codes/{id}")).await?;
            print_msg(json, &format!("code {code}"), &body);
        }
        CodeCommand::Pause { code } => {
            let id = api.code_id(&code).await?;
            let body = api
                .post(&format!("/codes/{id}/pause_task_queue"), None)
                .await?;
            print_msg(json, &format!("code {code}"), &body);
        }
        CodeCommand::Resume { code } => {
            let id = api.code_id(&code).await?;
            let body = api
                .post(&format!("/codes/{id}/resume_task_queue"), None)
                .await?;
            print_msg(json, &format!("code {code}"), &body);
        }
    }
    Ok(())
}

fn first_task_id(body: &Value) -> anyhow::Result<String> {
    body["tasks"][0]["id"]
        .as_str()
        .map(str::to_string)
        .context("workhook answered without a task id")
}

const TASK_FIELDS: &[&str] = &[
    "id",
    "code_name",
    "code_rev",
    "status",
    "msg",
    "created_at",
    "start_time",
    "end_time",
    "duration",
    "payload",
];

async fn task(api: &Api, command: TaskCommand, json: bool) -> anyhow::Result<i32> {
    match command {
        TaskCommand::Queue {
            code,
            payload,
            priority,
            delay,
            timeout,
            label,
            wait,
        } => {
            let payload = payload.as_deref().map(payload_arg).transpose()?;
            let mut t = json!({"code_name": code, "payload": payload.unwrap_or_default()});
            if let Some(v) = priority {
                t["priority"] = json!(v);
            }
            if let Some(v) = delay {
                t["delay"] = json!(v);
            }
            if let Some(v) = timeout {
                t["timeout"] = json!(v);
            }
            if let Some(v) = label {
                t["label"] = json!(v);
            }
            let body = api.post("/tasks", Some(json!({ "tasks": [t] }))).await?;
            let id = first_task_id(&body)?;
            if !wait {
                if json {
                    println!("{body}");
                } else {
                    println!("{id}");
                }
                return Ok(0);
            }
            if !json {
                println!("{id}");
            }
            let task = wait_for(api, &id).await?;
            if json {
                println!("{task}");
            }
            let status = task["status"].as_str().unwrap_or("");
            if status == "complete" {
                return Ok(0);
            }
            let msg = task["msg"].as_str().filter(|m| !m.is_empty());
            eprintln!(
                "error: task {id} ended as {status}{}",
                msg.map(|m| format!(": {m}")).unwrap_or_default()
            );
            return Ok(EXIT_TASK_FAILED);
        }
        TaskCommand::List {
            code,
            status,
            page,
            per_page,
        } => {
            use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
            let mut query = vec![];
            if let Some(c) = &code {
                query.push(format!(
                    "code_name={}",
                    utf8_percent_encode(c, NON_ALPHANUMERIC)
                ));
            }
            for s in &status {
                query.push(format!("{s}=1"));
            }
            if let Some(p) = page {
                query.push(format!("page={p}"));
            }
            if let Some(p) = per_page {
                query.push(format!("per_page={p}"));
            }
            let path = if query.is_empty() {
                "/tasks".to_string()
            } else {
                format!("/tasks?{}", query.join("&"))
            };
            let body = api.get(&path).await?;
            if json {
                println!("{body}");
            } else {
                let tasks = body["tasks"].as_array().cloned().unwrap_or_default();
                let rows: Vec<Vec<String>> = tasks
                    .iter()
                    .map(|t| {
                        let duration = t["duration"]
                            .as_f64()
                            .map(|ms| format!("{:.1}s", ms / 1000.0))
                            .unwrap_or_else(|| "-".into());
                        let mut row: Vec<String> = ["id", "code_name", "code_rev", "status"]
                            .iter()
                            .map(|f| cell(&t[*f]))
                            .collect();
                        row.extend([duration, cell(&t["created_at"]), cell(&t["msg"])]);
                        row
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["ID", "CODE", "REV", "STATUS", "DURATION", "CREATED", "MSG"],
                        &rows
                    )
                );
            }
        }
        TaskCommand::Info { id } => {
            let body = api.get(&format!("/tasks/{id}")).await?;
            if json {
                println!("{body}");
            } else {
                print_object(&body, TASK_FIELDS);
            }
        }
        TaskCommand::Log { id, follow } => {
            if follow {
                follow_log(api, &id).await?;
            } else {
                let log = api.get_bytes(&format!("/tasks/{id}/log")).await?.bytes;
                if json {
                    println!("{}", json!({ "log": String::from_utf8_lossy(&log) }));
                } else {
                    std::io::stdout().write_all(&log)?;
                }
            }
        }
        TaskCommand::Cancel { id } => {
            let body = api.post(&format!("/tasks/{id}/cancel"), None).await?;
            print_msg(json, &format!("task {id}"), &body);
        }
        TaskCommand::Retry { id, delay } => {
            let request = delay.map(|d| json!({ "delay": d }));
            let body = api.post(&format!("/tasks/{id}/retry"), request).await?;
            if json {
                println!("{body}");
            } else {
                println!("{}", first_task_id(&body)?);
            }
        }
    }
    Ok(0)
}

/// Polls the task every 200 ms until it ends, showing its status on stderr; the final task.
async fn wait_for(api: &Api, id: &str) -> anyhow::Result<Value> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let task = api.get(&format!("/tasks/{id}")).await?;
        let status = task["status"].as_str().unwrap_or("").to_string();
        let elapsed = started.elapsed().as_secs_f64();
        let mut err = std::io::stderr();
        if tty {
            let _ = write!(err, "\r\x1b[2Ktask {id}: {status} ({elapsed:.1}s)");
            let _ = err.flush();
        } else if status != last {
            let _ = writeln!(err, "task {id}: {status} ({elapsed:.1}s)");
        }
        last = status;
        if is_final(&last) {
            if tty {
                let _ = writeln!(err);
            }
            return Ok(task);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints the task's log as it grows (polled every 500 ms) until the task ends.
async fn follow_log(api: &Api, id: &str) -> anyhow::Result<()> {
    let mut printed = 0usize;
    let mut out = std::io::stdout();
    loop {
        // The status first: a log read after the task ended is its whole log.
        let task = api.get(&format!("/tasks/{id}")).await?;
        let log = api.get_bytes(&format!("/tasks/{id}/log")).await?.bytes;
        if log.len() < printed {
            // A new attempt started a new log.
            printed = 0;
        }
        out.write_all(&log[printed..])?;
        out.flush()?;
        printed = log.len();
        if is_final(task["status"].as_str().unwrap_or("")) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn schedule(api: &Api, command: ScheduleCommand, json: bool) -> anyhow::Result<()> {
    match command {
        ScheduleCommand::Create {
            code,
            run_every,
            cron,
            start_at,
            end_at,
            run_times,
            payload,
            priority,
            timeout,
            label,
        } => {
            let payload = payload.as_deref().map(payload_arg).transpose()?;
            let mut sc = json!({"code_name": code, "payload": payload.unwrap_or_default()});
            let fields = [
                ("run_every", run_every.map(|v| json!(v))),
                ("cron", cron.map(|v| json!(v))),
                ("start_at", start_at.map(|v| json!(v))),
                ("end_at", end_at.map(|v| json!(v))),
                ("run_times", run_times.map(|v| json!(v))),
                ("priority", priority.map(|v| json!(v))),
                ("timeout", timeout.map(|v| json!(v))),
                ("label", label.map(|v| json!(v))),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    sc[k] = v;
                }
            }
            let body = api
                .post("/schedules", Some(json!({ "schedules": [sc] })))
                .await?;
            if json {
                println!("{body}");
            } else {
                println!(
                    "{}",
                    body["schedules"][0]["id"]
                        .as_str()
                        .context("workhook answered without a schedule id")?
                );
            }
        }
        ScheduleCommand::List => {
            let body = api.get("/schedules").await?;
            if json {
                println!("{body}");
            } else {
                let schedules = body["schedules"].as_array().cloned().unwrap_or_default();
                let rows: Vec<Vec<String>> = schedules
                    .iter()
                    .map(|s| {
                        let when = match (&s["run_every"], &s["cron"]) {
                            (Value::Number(n), _) => format!("every {n}s"),
                            (_, Value::String(c)) => format!("cron {c}"),
                            _ => "-".into(),
                        };
                        vec![
                            cell(&s["id"]),
                            cell(&s["code_name"]),
                            cell(&s["status"]),
                            when,
                            cell(&s["run_count"]),
                            cell(&s["next_start"]),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["ID", "CODE", "STATUS", "WHEN", "RUNS", "NEXT"], &rows)
                );
            }
        }
        ScheduleCommand::Info { id } => {
            let body = api.get(&format!("/schedules/{id}")).await?;
            if json {
                println!("{body}");
            } else {
                print_object(
                    &body,
                    &[
                        "id",
                        "code_name",
                        "status",
                        "run_every",
                        "cron",
                        "run_count",
                        "next_start",
                    ],
                );
            }
        }
        ScheduleCommand::Cancel { id } => {
            let body = api.post(&format!("/schedules/{id}/cancel"), None).await?;
            print_msg(json, &format!("schedule {id}"), &body);
        }
    }
    Ok(())
}

/// Mints a webhook token for the code and returns the URL that carries it.
async fn scoped_webhook_url(s: &Settings, code_name: &str) -> anyhow::Result<String> {
    let api = Api::new(s)?;
    let code_id = api.code_id(code_name).await?;
    let body = api
        .post(&format!("/codes/{code_id}/webhook_tokens"), None)
        .await?;
    let path = body["webhook_path"]
        .as_str()
        .context("workhook answered without a webhook path")?;
    let base = s
        .public_url
        .as_deref()
        .unwrap_or(&s.url)
        .trim_end_matches('/');
    Ok(format!("{base}{path}"))
}

fn package_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_dir() {
        workhook_cli::zip_dir(path)
    } else {
        let bytes = std::fs::read(path)?;
        if !bytes.starts_with(b"PK") {
            bail!(
                "{} is not a zip; give a directory or a .zip",
                path.display()
            );
        }
        Ok(bytes)
    }
}

/// The package as a body that reports on stderr how much of it has been sent: a rewritten line
/// on a terminal, a line at each quarter otherwise.
fn upload_progress(package: Vec<u8>) -> reqwest::Body {
    const PIECE: usize = 64 * 1024;
    let total = package.len().max(1);
    let terminal = std::io::stderr().is_terminal();
    let package = bytes::Bytes::from(package);
    let pieces: Vec<bytes::Bytes> = (0..package.len().div_ceil(PIECE))
        .map(|i| package.slice(i * PIECE..((i + 1) * PIECE).min(package.len())))
        .collect();
    let mut sent = 0usize;
    let mut last_quarter = 0usize;
    let stream = futures_util::stream::iter(pieces.into_iter().map(move |piece| {
        sent += piece.len();
        let percent = sent * 100 / total;
        if terminal {
            eprint!("\ruploading {sent} of {total} bytes ({percent}%)");
        } else if percent / 25 > last_quarter {
            last_quarter = percent / 25;
            eprintln!("uploading: {percent}% of {total} bytes");
        }
        let _ = std::io::stderr().flush();
        Ok::<_, std::io::Error>(piece)
    }));
    reqwest::Body::wrap_stream(stream)
}
