//! Runs a worker. Executors sit behind one trait so other isolation (containers, WebAssembly) can
//! be added; `ProcessExecutor` runs the worker as a local process group under IronWorker's
//! contract.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use workhook_proto as pb;

use crate::logs::{Output, Tail};

/// Everything needed to run one attempt of a task.
pub struct Job {
    pub task_id: String,
    pub attempt: i32,
    pub command: String,
    pub config: Option<String>,
    pub env_vars: HashMap<String, String>,
    pub payload: Bytes,
    pub timeout: Duration,
    /// The unpacked code package, if the code has one.
    pub package: Option<PathBuf>,
    /// Further variables for the worker (the API URL and the task's own token).
    pub extra_env: Vec<(&'static str, String)>,
    /// The webhook request (method, query, content type, headers) as JSON, for webhook tasks.
    pub request: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    Error {
        msg: String,
        error_class: String,
    },
    Timeout {
        msg: String,
    },
    /// Stopped from outside (cancelled, or the task was lost to another runner).
    Stopped,
}

impl Outcome {
    /// The status, message and error class reported to the registry.
    pub fn report(&self) -> (&'static str, String, String) {
        match self {
            Outcome::Complete => ("complete", String::new(), String::new()),
            Outcome::Error { msg, error_class } => ("error", msg.clone(), error_class.clone()),
            Outcome::Timeout { msg } => ("timeout", msg.clone(), "Timeout".into()),
            Outcome::Stopped => ("cancelled", "Cancelled".into(), String::new()),
        }
    }
}

pub trait Executor: Send + Sync + 'static {
    /// Runs the job, sending its output to `logs`, until it ends, times out or `stop` fires.
    fn run(
        &self,
        job: Job,
        logs: mpsc::Sender<Output>,
        stop: CancellationToken,
    ) -> impl Future<Output = anyhow::Result<Outcome>> + Send;
}

/// Runs workers as local processes: `sh -c "<command> \"$@\""` (or the command's words directly
/// when it needs no shell) with IronWorker's arguments and
/// environment, in a fresh task directory holding a copy of the package, in its own process
/// group so a timeout or a cancel kills the worker and everything it started.
pub struct ProcessExecutor {
    /// This process's parent of the slot directories.
    tasks_dir: PathBuf,
    /// Slot directories not in use, by number; a task takes one and gives it back.
    free_slots: std::sync::Mutex<Vec<usize>>,
    /// Slot directories made so far (as many as tasks ever ran here at once).
    slots_made: std::sync::atomic::AtomicUsize,
}

/// Files every task rewrites in its slot directory, so they keep their inodes from task to task.
const KEPT_FILES: [&str; 3] = ["payload", "config", "request.json"];

/// How much of stderr becomes `msg` when a worker fails.
const STDERR_TAIL: usize = 1024;
const READ_CHUNK: usize = 16 * 1024;
/// Variables of the runner's own environment a worker inherits; nothing else (no secrets).
const INHERITED_ENV: [&str; 4] = ["PATH", "LANG", "LC_ALL", "TZ"];

impl Executor for ProcessExecutor {
    async fn run(
        &self,
        job: Job,
        logs: mpsc::Sender<Output>,
        stop: CancellationToken,
    ) -> anyhow::Result<Outcome> {
        let slot = self.take_slot();
        let root = self.tasks_dir.join(format!("slot-{}", slot.number));
        self.run_in(&root, job, logs, stop).await
    }
}

/// A slot directory in use; given back when dropped.
struct SlotDir<'a> {
    number: usize,
    executor: &'a ProcessExecutor,
}

impl Drop for SlotDir<'_> {
    fn drop(&mut self) {
        self.executor
            .free_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.number);
    }
}

impl ProcessExecutor {
    /// Task directories under `tasks_dir/<instance>`: `instance` (the runner's id) keeps two
    /// runners that were given the same directory apart.
    pub fn new(tasks_dir: &Path, instance: &str) -> Self {
        let instance = match instance.replace(['/', '\\'], "_") {
            name if name.is_empty() || name == "." || name == ".." => "runner".to_string(),
            name => name,
        };
        Self {
            tasks_dir: tasks_dir.join(instance),
            free_slots: Default::default(),
            slots_made: Default::default(),
        }
    }

    /// Removes this process's task directories (on the way out).
    pub fn remove_dirs(&self) {
        let _ = std::fs::remove_dir_all(&self.tasks_dir);
    }

    fn take_slot(&self) -> SlotDir<'_> {
        let free = self
            .free_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let number = free.unwrap_or_else(|| {
            self.slots_made
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        });
        SlotDir {
            number,
            executor: self,
        }
    }
}

/// Makes `root` ready for a new task: a `task` directory holding exactly a copy of the package
/// (or nothing), and nothing else the last task in this slot left but the regular files every
/// task rewrites. Reusing the slot's directories and files rather than creating and deleting a
/// tree per task spares the file system its inode allocations, which on ext4 cost the runner
/// 0.4-2.4 ms of CPU per task (docs/BENCHMARKS.md). What cannot be cleared (a worker may take the
/// permissions away from what it made) is moved aside whole, and the slot starts afresh: no
/// worker can break its slot for the tasks after it.
fn prepare_slot(root: &Path, work: &Path, package: Option<&Path>) -> std::io::Result<()> {
    let fill = |work: &Path| match package {
        Some(package) => crate::package::sync_tree(package, work),
        None => {
            std::fs::create_dir_all(work)?;
            clear_dir(work)
        }
    };
    if let Err(e) = clear_slot(root).and_then(|()| fill(work)) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let aside = root.with_extension(format!("abandoned-{nanos}"));
        tracing::warn!(slot = %root.display(), aside = %aside.display(), error = %e,
            "the last task's files cannot be removed; moving the slot's directory aside");
        std::fs::rename(root, &aside)?;
        std::fs::create_dir_all(root)?;
        fill(work)?;
    }
    Ok(())
}

/// Empties `root` but for the files every task rewrites and the `task` directory, which
/// `prepare_slot` fills.
fn clear_slot(root: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let name = entry.file_name();
        if kind.is_file() && KEPT_FILES.iter().any(|f| name == *f) {
            continue;
        }
        if !(kind.is_dir() && name == "task") {
            remove(&entry.path(), kind)?;
        }
    }
    Ok(())
}

fn clear_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        remove(&entry.path(), entry.file_type()?)?;
    }
    Ok(())
}

/// Writes `data` as the whole of a file the slot keeps, keeping its inode.
fn rewrite(path: &Path, data: &[u8]) -> std::io::Result<()> {
    crate::package::overwrite(path, data).map(drop)
}

/// Removes a directory tree, a file or a symlink (never followed).
fn remove(path: &Path, kind: std::fs::FileType) -> std::io::Result<()> {
    if kind.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

impl ProcessExecutor {
    async fn run_in(
        &self,
        root: &Path,
        mut job: Job,
        logs: mpsc::Sender<Output>,
        stop: CancellationToken,
    ) -> anyhow::Result<Outcome> {
        let work = root.join("task");
        let payload_file = root.join("payload");
        let config_file = root.join("config");
        let request_path = root.join("request.json");
        let request_file = job.request.is_some().then(|| request_path.clone());
        {
            let (root, work, package) = (root.to_path_buf(), work.clone(), job.package.clone());
            let (payload, config, request) = (
                std::mem::take(&mut job.payload),
                job.config.take().unwrap_or_default(),
                job.request.take(),
            );
            let (payload_file, config_file) = (payload_file.clone(), config_file.clone());
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                prepare_slot(&root, &work, package.as_deref())?;
                rewrite(&payload_file, &payload)?;
                rewrite(&config_file, config.as_bytes())?;
                match request {
                    Some(request) => rewrite(&request_path, request.as_bytes()),
                    None => match std::fs::remove_file(&request_path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                        _ => Ok(()),
                    },
                }
            })
            .await??;
        }

        let worker_args = [
            "-payload".as_ref(),
            payload_file.as_os_str(),
            "-config".as_ref(),
            config_file.as_os_str(),
            "-id".as_ref(),
            job.task_id.as_ref(),
            "-d".as_ref(),
            work.as_os_str(),
        ];
        let prepare = |command: &mut tokio::process::Command| {
            command
                .args(worker_args)
                .current_dir(&work)
                .env_clear()
                .envs(
                    INHERITED_ENV
                        .iter()
                        .filter_map(|name| std::env::var_os(name).map(|value| (*name, value))),
                )
                .env("HOME", &work)
                .env("PAYLOAD_FILE", &payload_file)
                .env("CONFIG_FILE", &config_file)
                .env("TASK_ID", &job.task_id)
                .env("TASK_DIR", &work)
                .envs(job.extra_env.iter().map(|(k, v)| (*k, v)))
                .envs(request_file.iter().map(|p| ("WORKHOOK_REQUEST_FILE", p)))
                .envs(&job.env_vars)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
        };
        // A plain command line (`python3 worker.py`) is executed directly: one exec fewer than
        // `sh -c` per task. Anything the shell would interpret, a builtin, or a program that is
        // not on the PATH or cannot be started (so that sh reports why, as it always has) goes
        // through `sh -c`.
        let child_path = job
            .env_vars
            .get("PATH")
            .map(std::ffi::OsString::from)
            .or_else(|| std::env::var_os("PATH"));
        let direct = plain_words(&job.command).and_then(|words| {
            // Resolved here, on the worker's PATH: a program named by a path lets the standard
            // library spawn with posix_spawn (a PATH lookup under a changed environment makes
            // it fork the whole runner instead, which costs more than the shell saved).
            let program = match words[0] {
                // `./run` is resolved in the task directory, where the worker starts, as the
                // shell started there would.
                p if p.contains('/') => PathBuf::from(p),
                p => find_program(p, child_path.as_deref()?)?,
            };
            let mut command = tokio::process::Command::new(program);
            command.args(&words[1..]);
            prepare(&mut command);
            Some(command)
        });
        let spawned = match direct.map(|mut c| c.spawn()) {
            Some(Ok(child)) => Some(Ok(child)),
            // Not found, not executable: sh says so in the words the worker's author knows.
            Some(Err(_)) | None => None,
        };
        let spawned = match spawned {
            Some(spawned) => spawned,
            None => {
                let mut command = tokio::process::Command::new("/bin/sh");
                command
                    .arg("-c")
                    .arg(format!("{} \"$@\"", job.command))
                    .arg("workhook-worker");
                prepare(&mut command);
                command.spawn()
            }
        };
        let mut child = spawned?;
        let pgid = child.id().map(|id| id as i32);
        let stdout = child
            .stdout
            .take()
            .map(|out| tokio::spawn(pump(out, pb::LogStream::Stdout, logs.clone(), None)));
        let stderr = child.stderr.take().map(|err| {
            tokio::spawn(pump(
                err,
                pb::LogStream::Stderr,
                logs.clone(),
                Some(Tail::new(STDERR_TAIL)),
            ))
        });
        drop(logs);

        enum End {
            Exited(std::io::Result<ExitStatus>),
            TimedOut,
            Stopped,
        }
        let end = tokio::select! {
            status = child.wait() => End::Exited(status),
            _ = tokio::time::sleep(job.timeout) => End::TimedOut,
            _ = stop.cancelled() => End::Stopped,
        };
        // Whatever happened, nothing the worker started outlives it.
        if let Some(pgid) = pgid {
            kill_group(pgid);
        }
        let _ = child.wait().await;
        // The pipes close once the group is gone; a process that left the group could hold
        // them, so the pumps get a bounded time.
        let drain = Duration::from_secs(2);
        if let Some(out) = stdout {
            let _ = tokio::time::timeout(drain, out).await;
        }
        let tail = match stderr {
            Some(err) => match tokio::time::timeout(drain, err).await {
                Ok(Ok(tail)) => tail.map(|t| t.text()).unwrap_or_default(),
                _ => String::new(),
            },
            None => String::new(),
        };
        Ok(match end {
            End::Exited(status) => outcome(status?, tail),
            End::TimedOut => Outcome::Timeout {
                msg: format!("Task timed out after {} seconds", job.timeout.as_secs()),
            },
            End::Stopped => Outcome::Stopped,
        })
    }
}

/// The words of a command line that `sh` would split on blanks and run as it is: no quoting,
/// expansion, redirection, globbing, assignment or operator, and not a shell builtin or
/// keyword. None when the shell is needed.
fn plain_words(command: &str) -> Option<Vec<&str>> {
    const SHELL_ONLY: &[&str] = &[
        ".", ":", "alias", "bg", "break", "case", "cd", "command", "continue", "do", "done",
        "elif", "else", "esac", "eval", "exec", "exit", "export", "fc", "fg", "fi", "for",
        "getopts", "hash", "if", "jobs", "local", "read", "readonly", "return", "set", "shift",
        "source", "then", "times", "trap", "type", "ulimit", "umask", "unalias", "unset", "until",
        "wait", "while",
    ];
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_./,:+@%=".contains(&b);
    if !command.bytes().all(|b| plain(b) || b == b' ' || b == b'\t') {
        return None;
    }
    let words: Vec<&str> = command
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    let first = *words.first()?;
    let builtin = SHELL_ONLY.contains(&first);
    // `NAME=value cmd` is an assignment, which only the shell performs.
    (!builtin && !first.contains('=')).then_some(words)
}

/// The first executable file named `program` in the directories of `path`.
fn find_program(program: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn outcome(status: ExitStatus, stderr_tail: String) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Outcome::Complete;
    }
    let error_class = match (status.code(), status.signal()) {
        (Some(code), _) => format!("Process Exit {code}"),
        (None, Some(signal)) => format!("Process Signal {signal}"),
        (None, None) => "Process Error".into(),
    };
    let msg = if stderr_tail.is_empty() {
        error_class.clone()
    } else {
        stderr_tail
    };
    Outcome::Error { msg, error_class }
}

fn kill_group(pgid: i32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, error = %e, "killing the worker's process group failed"),
    }
}

/// Reads a pipe to its end, forwarding every read; keeps a tail if asked.
async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    stream: pb::LogStream,
    logs: mpsc::Sender<Output>,
    mut tail: Option<Tail>,
) -> Option<Tail> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(t) = tail.as_mut() {
                    t.push(&buf[..n]);
                }
                let data = Bytes::copy_from_slice(&buf[..n]);
                if logs.send(Output { stream, data }).await.is_err() {
                    // Nobody ships logs any more; keep draining so the worker never blocks.
                    continue;
                }
            }
        }
    }
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_command_lines_skip_the_shell() {
        assert_eq!(
            plain_words("python3  worker.py --mode=fast"),
            Some(vec!["python3", "worker.py", "--mode=fast"])
        );
        assert_eq!(plain_words("./run"), Some(vec!["./run"]));
        assert_eq!(plain_words("true"), Some(vec!["true"]));
        for shell in [
            "",
            "  ",
            "exit 0",
            "cd x",
            "FOO=1 env",
            "echo $HOME",
            "echo 'a b'",
            "echo \"a\"",
            "ls *.py",
            "a | b",
            "a && b",
            "a; b",
            "a > f",
            "echo ~",
            "echo `id`",
            "a\nb",
            "if true",
            "echo a\\ b",
        ] {
            assert_eq!(plain_words(shell), None, "{shell:?}");
        }
    }

    #[test]
    fn programs_are_found_on_the_workers_path() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let data = dir.path().join("data");
        std::fs::write(&data, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths(["relative", "/nonexistent", dir.path().to_str().unwrap()])
            .unwrap();
        assert_eq!(find_program("tool", &path), Some(exe));
        assert_eq!(find_program("data", &path), None, "not executable");
        assert_eq!(find_program("missing", &path), None);
    }

    #[test]
    fn a_reused_slot_keeps_nothing_of_the_last_task_but_the_files_it_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let (root, work) = (dir.path().join("slot-0"), dir.path().join("slot-0/task"));
        let package = dir.path().join("package");
        std::fs::create_dir_all(package.join("lib")).unwrap();
        std::fs::write(package.join("run.sh"), "exit 0").unwrap();
        std::fs::write(package.join("lib/x"), "x").unwrap();
        prepare_slot(&root, &work, Some(&package)).unwrap();
        std::fs::write(root.join("payload"), "old").unwrap();
        // What a worker may leave: files in its directory and beside it, a symlink in place of
        // a file the next task rewrites.
        std::fs::write(work.join("output"), "left").unwrap();
        std::fs::write(work.join("run.sh"), "changed").unwrap();
        std::fs::write(root.join("stray"), "left").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), root.join("config")).unwrap();
        prepare_slot(&root, &work, Some(&package)).unwrap();
        let names = |dir: &Path| {
            let mut names: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(&root), ["payload", "task"]);
        assert_eq!(names(&work), ["lib", "run.sh"]);
        assert_eq!(
            std::fs::read_to_string(work.join("run.sh")).unwrap(),
            "exit 0"
        );
        assert!(!dir.path().join("elsewhere").exists());
        prepare_slot(&root, &work, None).unwrap();
        assert!(names(&work).is_empty());
        // A task directory replaced by a symlink: the link goes, not what it points to.
        let elsewhere = dir.path().join("kept");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("f"), "f").unwrap();
        std::fs::remove_dir(&work).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &work).unwrap();
        prepare_slot(&root, &work, Some(&package)).unwrap();
        assert!(!work.is_symlink());
        assert_eq!(names(&work), ["lib", "run.sh"]);
        assert_eq!(names(&elsewhere), ["f"]);
    }

    #[test]
    fn a_rewritten_file_holds_exactly_the_new_contents_in_the_same_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("payload");
        rewrite(&file, b"a longer first payload").unwrap();
        let inode = std::fs::metadata(&file).unwrap().ino();
        rewrite(&file, b"short").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"short");
        assert_eq!(std::fs::metadata(&file).unwrap().ino(), inode);
        rewrite(&file, b"").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"");
    }

    #[test]
    fn slots_are_reused_and_never_shared() {
        let dir = tempfile::tempdir().unwrap();
        let executor = ProcessExecutor::new(dir.path(), "r1");
        let a = executor.take_slot();
        let b = executor.take_slot();
        assert_ne!(a.number, b.number);
        let first = a.number;
        drop(a);
        assert_eq!(executor.take_slot().number, first);
    }

    #[test]
    fn exit_statuses_map_to_outcomes() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            outcome(ExitStatus::from_raw(0), "x".into()),
            Outcome::Complete
        );
        assert_eq!(
            outcome(ExitStatus::from_raw(3 << 8), "boom".into()),
            Outcome::Error {
                msg: "boom".into(),
                error_class: "Process Exit 3".into()
            }
        );
        assert_eq!(
            outcome(ExitStatus::from_raw(9), String::new()),
            Outcome::Error {
                msg: "Process Signal 9".into(),
                error_class: "Process Signal 9".into()
            }
        );
    }
}
