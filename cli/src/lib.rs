//! The pieces of the `workhook` command line that are worth testing on their own: where its
//! settings come from, the webhook URL, and zipping a directory.
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

impl Settings {
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
            .context("no project: set WORKHOOK_PROJECT_ID (or pass --project-id)")?;
        let token = self
            .token
            .as_deref()
            .context("no token: set WORKHOOK_TOKEN (or pass --token)")?;
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
