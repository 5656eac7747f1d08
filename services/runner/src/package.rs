//! Code packages, fetched from the registry once per checksum and kept unpacked on disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use workhook_proto as pb;

pub struct PackageCache {
    dir: PathBuf,
    registry: crate::Registry,
    /// One lock per checksum, so concurrent tasks of one code download it once.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn valid_checksum(checksum: &str) -> bool {
    checksum.len() == 64 && checksum.bytes().all(|b| b.is_ascii_hexdigit())
}

impl PackageCache {
    pub fn new(dir: PathBuf, registry: crate::Registry) -> Self {
        Self {
            dir,
            registry,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The directory holding the unpacked package, fetching it first if needed.
    pub async fn get(&self, checksum: &str) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(
            valid_checksum(checksum),
            "bad package checksum {checksum:?}"
        );
        let target = self.dir.join(checksum);
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Ok(target);
        }
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(checksum.to_string())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Ok(target);
        }
        // A registry restart is no reason to fail a task: retry for a while.
        let give_up = tokio::time::Instant::now() + FETCH_PATIENCE;
        let mut delay = std::time::Duration::from_millis(100);
        let data = loop {
            match self.fetch(checksum).await {
                Ok(data) => break data,
                Err(e)
                    if e.code() != tonic::Code::NotFound
                        && tokio::time::Instant::now() < give_up =>
                {
                    tracing::warn!(%checksum, error = %e, "fetching the package failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => return Err(e).context("fetching the package"),
            }
        };
        let dir = self.dir.clone();
        let checksum = checksum.to_string();
        tokio::task::spawn_blocking(move || unpack(&dir, &checksum, data))
            .await
            .context("unpacking the package")??;
        Ok(target)
    }
}

impl PackageCache {
    async fn fetch(&self, checksum: &str) -> Result<Vec<u8>, tonic::Status> {
        let mut chunks = self
            .registry
            .clone()
            .get_package(pb::GetPackageRequest {
                checksum: checksum.to_string(),
            })
            .await?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = chunks.message().await? {
            data.extend_from_slice(&chunk.data);
        }
        Ok(data)
    }
}

/// How long a package fetch is retried while the registry cannot be reached.
const FETCH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Checks and unpacks a zip into `dir/<checksum>`, through a temporary directory and a rename so
/// a half-written package is never used.
fn unpack(dir: &Path, checksum: &str, data: Vec<u8>) -> anyhow::Result<()> {
    use sha2_check::verify;
    verify(checksum, &data)?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{checksum}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(data)).context("the package is not a zip")?;
    archive.extract(&tmp).context("unpacking the zip")?;
    match std::fs::rename(&tmp, dir.join(checksum)) {
        Ok(()) => Ok(()),
        Err(_) if dir.join(checksum).exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

mod sha2_check {
    /// The registry addresses packages by SHA-256; a package whose bytes do not match is refused.
    pub fn verify(checksum: &str, data: &[u8]) -> anyhow::Result<()> {
        use sha2::{Digest, Sha256};
        let actual = hex::encode(Sha256::digest(data));
        anyhow::ensure!(
            actual.eq_ignore_ascii_case(checksum),
            "the package's checksum is {actual}, not {checksum}"
        );
        Ok(())
    }
}

/// Copies a directory tree, keeping file modes, so each task gets its own copy of the package
/// and a worker that writes to its files cannot change the cached package.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &dest)?;
        } else if kind.is_symlink() {
            #[cfg(unix)]
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &dest)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut out);
        for (name, data, mode) in files {
            let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
        out.into_inner()
    }

    fn sum(data: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn unpacks_keeping_modes_and_copies_per_task() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let zip = zip_of(&[("run.sh", b"echo hi", 0o755), ("lib/a.txt", b"a", 0o644)]);
        let checksum = sum(&zip);
        unpack(dir.path(), &checksum, zip).unwrap();
        let pkg = dir.path().join(&checksum);
        let mode = std::fs::metadata(pkg.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let task = dir.path().join("task");
        copy_tree(&pkg, &task).unwrap();
        assert_eq!(std::fs::read(task.join("lib/a.txt")).unwrap(), b"a");
        std::fs::write(task.join("run.sh"), "changed").unwrap();
        assert_eq!(std::fs::read(pkg.join("run.sh")).unwrap(), b"echo hi");
    }

    #[test]
    fn refuses_a_package_that_does_not_match_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let zip = zip_of(&[("a", b"a", 0o644)]);
        let wrong = sum(b"something else");
        assert!(unpack(dir.path(), &wrong, zip).is_err());
        assert!(!dir.path().join(&wrong).exists());
    }

    #[test]
    fn refuses_paths_that_escape_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let zip = zip_of(&[("../evil", b"x", 0o644)]);
        let checksum = sum(&zip);
        let _ = unpack(dir.path(), &checksum, zip);
        assert!(!dir.path().join("evil").exists());
        assert!(!dir.path().parent().unwrap().join("evil").exists());
    }
}
