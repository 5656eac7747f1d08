//! The pieces of the `workhook` command line that are worth testing on their own: where its
//! settings come from (flags, the environment, `iron.json`), the webhook URL, tables, and zipping
//! a directory.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Settings of the command line, from the environment; flags override them in `main`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The ingress, as this machine reaches it.
    pub url: String,
    /// The ingress, as third parties reach it (printed webhook URLs).
    pub public_url: Option<String>,
    pub project_id: Option<String>,
    pub token: Option<String>,
    pub registry_url: String,
}

/// The settings an `iron.json` (IronWorker's project file) holds; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IronFile {
    pub project_id: Option<String>,
    pub token: Option<String>,
    /// `protocol://host[:port]`, when the file names a host.
    pub url: Option<String>,
}

impl IronFile {
    /// Parses the text of an `iron.json`: `project_id`, `token`, `host`, `port` (a number or a
    /// string), `protocol` or `scheme` (default https).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text).context("iron.json is not JSON")?;
        let field = |k: &str| match &v[k] {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let url = field("host").map(|host| {
            let scheme = field("protocol")
                .or_else(|| field("scheme"))
                .unwrap_or_else(|| "https".into());
            match field("port") {
                Some(port) => format!("{scheme}://{host}:{port}"),
                None => format!("{scheme}://{host}"),
            }
        });
        Ok(IronFile {
            project_id: field("project_id"),
            token: field("token"),
            url,
        })
    }

    /// Reads `path` if it exists (`Ok(None)` if it does not).
    pub fn read(path: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text)
                .with_context(|| format!("reading {}", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

impl Settings {
    /// The environment ([`Settings::from_env`]), then an `iron.json`'s fields for what it left
    /// unset.
    pub fn from_env_and_file(
        var: impl Fn(&str) -> Option<String>,
        file: Option<&IronFile>,
    ) -> Self {
        let env_has_url = ["WORKHOOK_URL", "IRON_HOST", "IRON_WORKER_HOST"]
            .iter()
            .any(|n| var(n).is_some_and(|v| !v.is_empty()));
        let mut s = Self::from_env(var);
        if let Some(f) = file {
            if !env_has_url {
                if let Some(url) = &f.url {
                    s.url = url.trim_end_matches('/').to_string();
                }
            }
            if s.project_id.is_none() {
                s.project_id = f.project_id.clone();
            }
            if s.token.is_none() {
                s.token = f.token.clone();
            }
        }
        s
    }

    /// `WORKHOOK_*` first, then the `IRON_*` variables IronWorker's clients use.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Self {
        let first = |names: &[&str]| names.iter().find_map(|n| var(n).filter(|v| !v.is_empty()));
        let iron_url = first(&["IRON_HOST", "IRON_WORKER_HOST"]).map(|host| {
            let scheme = first(&["IRON_PROTOCOL", "IRON_SCHEME", "IRON_WORKER_PROTOCOL"])
                .unwrap_or_else(|| "https".into());
            match first(&["IRON_PORT", "IRON_WORKER_PORT"]) {
                Some(port) => format!("{scheme}://{host}:{port}"),
                None => format!("{scheme}://{host}"),
            }
        });
        Settings {
            url: first(&["WORKHOOK_URL"])
                .or(iron_url)
                .unwrap_or_else(|| "http://127.0.0.1:8080".into())
                .trim_end_matches('/')
                .to_string(),
            public_url: first(&["WORKHOOK_PUBLIC_URL"]),
            project_id: first(&[
                "WORKHOOK_PROJECT_ID",
                "IRON_PROJECT_ID",
                "IRON_WORKER_PROJECT_ID",
            ]),
            token: first(&["WORKHOOK_TOKEN", "IRON_TOKEN", "IRON_WORKER_TOKEN"]),
            registry_url: first(&["WORKHOOK_REGISTRY_URL"])
                .unwrap_or_else(|| "http://127.0.0.1:50051".into()),
        }
    }

    /// The project and token, or an error that says how to set them.
    pub fn credentials(&self) -> anyhow::Result<(&str, &str)> {
        let project = self
            .project_id
            .as_deref()
            .context(
                "no project: set WORKHOOK_PROJECT_ID (or pass --project-id, or put project_id in ./iron.json)",
            )?;
        let token = self.token.as_deref().context(
            "no token: set WORKHOOK_TOKEN (or pass --token, or put token in ./iron.json)",
        )?;
        Ok((project, token))
    }
}

/// The URL a third party POSTs to, to run `code_name` with the request body as its payload.
pub fn webhook_url(s: &Settings, code_name: &str) -> anyhow::Result<String> {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let (project, token) = s.credentials()?;
    let base = s
        .public_url
        .as_deref()
        .unwrap_or(&s.url)
        .trim_end_matches('/');
    Ok(format!(
        "{base}/2/projects/{project}/tasks/webhook?code_name={}&oauth={}",
        utf8_percent_encode(code_name, NON_ALPHANUMERIC),
        utf8_percent_encode(token, NON_ALPHANUMERIC),
    ))
}

/// Whether a task in `status` will not change any more.
pub fn is_final(status: &str) -> bool {
    matches!(
        status,
        "complete" | "error" | "cancelled" | "killed" | "timeout"
    )
}

/// The task statuses the API knows (and filters on).
pub const STATUSES: &[&str] = &[
    "queued",
    "preparing",
    "running",
    "complete",
    "error",
    "cancelled",
    "killed",
    "timeout",
];

/// A payload argument: `@FILE` is the file's text, anything else the text itself.
pub fn payload_arg(arg: &str) -> anyhow::Result<String> {
    match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}")),
        None => Ok(arg.to_string()),
    }
}

/// Rows under a header, each column padded to its widest cell (the last one is not padded).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Zips a directory in memory, keeping file modes (so `./worker` stays executable).
pub fn zip_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&current)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = path
                .strip_prefix(dir)?
                .to_str()
                .with_context(|| format!("{} is not UTF-8", path.display()))?
                .to_string();
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            #[cfg(unix)]
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
            #[cfg(not(unix))]
            let mode = 0o644;
            let options = zip::write::SimpleFileOptions::default().unix_permissions(mode & 0o777);
            zip.start_file(name, options)?;
            zip.write_all(&std::fs::read(&path)?)?;
        }
    }
    zip.finish()?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn workhook_variables_win_over_iron_ones() {
        let s = Settings::from_env(env(&[
            ("WORKHOOK_PROJECT_ID", "p1"),
            ("IRON_PROJECT_ID", "p2"),
            ("IRON_TOKEN", "t2"),
            ("IRON_HOST", "iron.example"),
            ("IRON_PORT", "8443"),
        ]));
        assert_eq!(s.project_id.as_deref(), Some("p1"));
        assert_eq!(s.token.as_deref(), Some("t2"));
        assert_eq!(s.url, "https://iron.example:8443");
        let s = Settings::from_env(env(&[("WORKHOOK_URL", "http://h:1/"), ("IRON_HOST", "x")]));
        assert_eq!(s.url, "http://h:1");
    }

    #[test]
    fn webhook_urls_use_the_public_base_and_escape() {
        let mut s = Settings::from_env(env(&[
            ("WORKHOOK_PROJECT_ID", "abc"),
            ("WORKHOOK_TOKEN", "t+k"),
        ]));
        assert_eq!(
            webhook_url(&s, "my worker").unwrap(),
            "http://127.0.0.1:8080/2/projects/abc/tasks/webhook?code_name=my%20worker&oauth=t%2Bk"
        );
        s.public_url = Some("https://hooks.example.com/".into());
        assert!(webhook_url(&s, "w")
            .unwrap()
            .starts_with("https://hooks.example.com/2/"));
        s.token = None;
        assert!(webhook_url(&s, "w").is_err());
    }

    #[test]
    fn iron_json_is_the_last_layer() {
        let f = IronFile::parse(
            r#"{"project_id":"pf","token":"tf","host":"iron.local","port":8080,"protocol":"http"}"#,
        )
        .unwrap();
        assert_eq!(f.url.as_deref(), Some("http://iron.local:8080"));
        let s = Settings::from_env_and_file(env(&[]), Some(&f));
        assert_eq!(s.project_id.as_deref(), Some("pf"));
        assert_eq!(s.token.as_deref(), Some("tf"));
        assert_eq!(s.url, "http://iron.local:8080");
        let s = Settings::from_env_and_file(
            env(&[("IRON_TOKEN", "te"), ("WORKHOOK_URL", "http://w:1")]),
            Some(&f),
        );
        assert_eq!(s.token.as_deref(), Some("te"));
        assert_eq!(s.project_id.as_deref(), Some("pf"));
        assert_eq!(s.url, "http://w:1");
        let f = IronFile::parse(r#"{"host":"h","scheme":"http","port":"81"}"#).unwrap();
        assert_eq!(f.url.as_deref(), Some("http://h:81"));
        assert_eq!(
            IronFile::parse(r#"{"host":"h"}"#).unwrap().url.as_deref(),
            Some("https://h")
        );
        assert!(IronFile::parse("nope").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(IronFile::read(&dir.path().join("iron.json")).unwrap(), None);
        std::fs::write(dir.path().join("iron.json"), r#"{"project_id":"x"}"#).unwrap();
        assert_eq!(
            IronFile::read(&dir.path().join("iron.json"))
                .unwrap()
                .unwrap()
                .project_id
                .as_deref(),
            Some("x")
        );
    }

    #[test]
    fn tables_pad_columns() {
        let t = table(
            &["ID", "NAME", "REV"],
            &[
                vec!["a".into(), "long-name".into(), "1".into()],
                vec!["bbb".into(), "x".into(), "12".into()],
            ],
        );
        assert_eq!(
            t,
            "ID   NAME       REV\na    long-name  1\nbbb  x          12\n"
        );
    }

    #[test]
    fn payloads_and_statuses() {
        assert_eq!(payload_arg("{}").unwrap(), "{}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.json");
        std::fs::write(&p, "[1]").unwrap();
        assert_eq!(payload_arg(&format!("@{}", p.display())).unwrap(), "[1]");
        assert!(is_final("timeout") && !is_final("running"));
    }

    #[test]
    fn zips_a_directory_keeping_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("run.sh"), "echo hi").unwrap();
        std::fs::set_permissions(
            dir.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), "a").unwrap();
        let bytes = zip_dir(dir.path()).unwrap();
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        assert_eq!(
            z.by_name("run.sh").unwrap().unix_mode().unwrap() & 0o777,
            0o755
        );
        assert!(z.by_name("sub/a.txt").is_ok());
    }
}
