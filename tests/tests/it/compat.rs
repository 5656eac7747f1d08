//! The official IronWorker clients, unchanged, against a live stack: PyPI `iron-worker` 1.3.8 and
//! npm `iron_worker` 0.1.8 (installed by `tests/compat/setup`, which `scripts/test` runs). Every
//! client call that fails fails the test.

use std::path::PathBuf;
use std::process::Stdio;

use workhook_tests::Stack;

fn compat_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("compat")
}

async fn run_client(which: &str) {
    let stack = Stack::start().await;
    let p = stack.create_project(&format!("compat-{which}")).await;
    let port = stack.http.rsplit(':').next().unwrap().to_string();
    let out = tokio::process::Command::new(compat_dir().join("run"))
        .arg(which)
        .env("WORKHOOK_COMPAT_HOST", "127.0.0.1")
        .env("WORKHOOK_COMPAT_PORT", port)
        .env("WORKHOOK_COMPAT_PROJECT_ID", &p.id)
        .env("WORKHOOK_COMPAT_TOKEN", &p.token)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("running tests/compat/run (bash, python3 and node are needed)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {which} client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_works_unchanged() {
    run_client("python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_node_client_works_unchanged() {
    run_client("node").await;
}
