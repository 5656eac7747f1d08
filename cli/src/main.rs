//! `workhook`: the command line for a workhook installation.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use workhook_cli::{webhook_url, Settings};
use workhook_proto::{self as pb, registry_client::RegistryClient};

#[derive(Parser)]
#[command(
    name = "workhook",
    version,
    about = "Run code whenever a webhook fires: the workhook command line",
    after_help = "Examples:
  workhook project create my-app --json
  workhook code upload ./worker --name hello --command 'sh run.sh'
  workhook webhook-url hello

Settings come from flags, then WORKHOOK_* variables, then the IRON_* variables and iron.json
that IronWorker's tools use."
)]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
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
    /// Code packages
    #[command(subcommand)]
    Code(CodeCommand),
    /// Print the URL to paste into a third party so that its webhooks run CODE_NAME. It carries
    /// a new webhook token that can only queue CODE_NAME's tasks (revocable); --project-token
    /// prints the old-style URL with the project token instead.
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
    Create {
        name: String,
        /// Print {"id","name","token"} as JSON
        #[arg(long)]
        json: bool,
    },
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
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn settings(args: &SettingsArgs) -> Settings {
    let mut s = Settings::from_env(|k| std::env::var(k).ok());
    if let Some(v) = &args.url {
        s.url = v.clone();
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
    s
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let s = settings(&cli.settings);
    match cli.command {
        Command::Project(ProjectCommand::Create { name, json }) => {
            let admin = std::env::var("WORKHOOK_ADMIN_TOKEN")
                .context("set WORKHOOK_ADMIN_TOKEN to the registry's admin token")?;
            let mut client = RegistryClient::connect(s.registry_url.clone())
                .await
                .with_context(|| format!("cannot reach the registry at {}", s.registry_url))?;
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
        }
        Command::WebhookUrl {
            code_name,
            project_token,
        } => {
            if project_token {
                println!("{}", webhook_url(&s, &code_name)?);
            } else {
                println!("{}", scoped_webhook_url(&s, &code_name).await?);
            }
        }
        Command::Code(CodeCommand::Upload {
            path,
            name,
            command,
            config,
            env,
            max_concurrency,
            retries,
            retries_delay,
            json,
        }) => {
            let (project, token) = s.credentials()?;
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
            eprint!("uploading {} bytes... ", package.len());
            let _ = std::io::stderr().flush();
            let form = reqwest::multipart::Form::new()
                .text("data", data.to_string())
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(package)
                        .file_name("package.zip")
                        .mime_str("application/zip")?,
                );
            let answer = reqwest::Client::new()
                .post(format!("{}/2/projects/{project}/codes", s.url))
                .header("Authorization", format!("OAuth {token}"))
                .multipart(form)
                .send()
                .await
                .with_context(|| format!("cannot reach workhook at {}", s.url))?;
            let body = answer_json(answer).await?;
            eprintln!("done");
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
    }
    Ok(())
}

/// Mints a webhook token for the code and returns the URL that carries it.
async fn scoped_webhook_url(s: &Settings, code_name: &str) -> anyhow::Result<String> {
    let (project, token) = s.credentials()?;
    let client = reqwest::Client::new();
    let mut code_id = None;
    for page in 0..=100 {
        let answer = client
            .get(format!(
                "{}/2/projects/{project}/codes?per_page=100&page={page}",
                s.url
            ))
            .header("Authorization", format!("OAuth {token}"))
            .send()
            .await
            .with_context(|| format!("cannot reach workhook at {}", s.url))?;
        let body = answer_json(answer).await?;
        let codes = body["codes"].as_array().cloned().unwrap_or_default();
        if let Some(code) = codes.iter().find(|c| c["name"] == code_name) {
            code_id = code["id"].as_str().map(str::to_string);
            break;
        }
        if codes.len() < 100 {
            break;
        }
    }
    let code_id = code_id.with_context(|| {
        format!("no code named {code_name:?}: upload it first (workhook code upload)")
    })?;
    let answer = client
        .post(format!(
            "{}/2/projects/{project}/codes/{code_id}/webhook_tokens",
            s.url
        ))
        .header("Authorization", format!("OAuth {token}"))
        .send()
        .await?;
    let body = answer_json(answer).await?;
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

async fn answer_json(answer: reqwest::Response) -> anyhow::Result<Value> {
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = body["msg"].as_str().unwrap_or("no message");
        bail!("workhook answered {status}: {msg}");
    }
    Ok(body)
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
