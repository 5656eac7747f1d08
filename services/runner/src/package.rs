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
        // A stat of a cached directory entry, done in place: this runs for every task, and a
        // trip through the blocking pool would cost more than the call.
        if target.is_dir() {
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
        if target.is_dir() {
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

/// Makes the regular file `to` (a file of its own, or none) a copy of `from`, contents and
/// permissions, in place, and writes it only when it differs. A slot runs the same package task
/// after task: written over with the bytes it already held, each of its files would still have
/// its pages dirtied, its times changed and be written out to disk again, per task. Comparing
/// reads the package from the page cache instead.
fn sync_file(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::io::Seek;
    let mut source = std::fs::File::open(from)?;
    let wanted = source.metadata()?;
    if let Ok(mut held) = std::fs::File::open(to) {
        let has = held.metadata()?;
        if has.len() == wanted.len()
            && has.permissions() == wanted.permissions()
            && same_contents(&mut source, &mut held)?
        {
            return Ok(());
        }
        source.rewind()?;
    }
    let copy = overwrite(to, &mut source)?;
    copy.set_permissions(wanted.permissions())
}

/// Whether two files, read from where they are, hold the same bytes to their ends.
fn same_contents(a: &mut std::fs::File, b: &mut std::fs::File) -> std::io::Result<bool> {
    const CHUNK: usize = 16 * 1024;
    let (mut x, mut y) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    loop {
        let n = fill(a, &mut x)?;
        if n != fill(b, &mut y)? || x[..n] != y[..n] {
            return Ok(false);
        }
        if n < CHUNK {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the file ends; how much it read.
fn fill(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Makes `data` the whole of the file at `path`, in place: written over the old contents, then
/// cut to length. Not by truncating the file to nothing first (as `std::fs::write` does): ext4
/// writes a file truncated to zero out to disk when it is closed (its guard for programs that
/// replace files that way), which cost a disk write per file per task.
pub fn overwrite(path: &Path, mut data: impl std::io::Read) -> std::io::Result<std::fs::File> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let len = std::io::copy(&mut data, &mut file)?;
    file.set_len(len)?;
    Ok(file)
}

/// Makes `to` an exact copy of the package tree `from` (contents and modes), reusing what `to`
/// already holds: a regular file of the package's name is written over in place where its
/// contents or mode differ (and not written at all where they do not), anything else
/// (a file the package does not have, a symlink, a file of another kind or with other names
/// linked to it) is removed first. A slot that runs the same package task after task so keeps
/// its inodes: creating and deleting the package's files per task made ext4's inode allocator
/// the runner's largest cost (docs/BENCHMARKS.md). Nothing runs in the slot meanwhile, so
/// nothing can swap a file for a link between the check and the write.
pub fn sync_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(to)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let source = std::fs::symlink_metadata(from.join(entry.file_name()));
        let keep = match &source {
            Ok(source) if kind.is_dir() => source.is_dir(),
            Ok(source) if kind.is_file() => source.is_file() && entry.metadata()?.nlink() == 1,
            _ => false,
        };
        if !keep {
            if kind.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            sync_tree(&entry.path(), &dest)?;
            let wanted = entry.metadata()?.permissions();
            if std::fs::symlink_metadata(&dest)?.permissions() != wanted {
                std::fs::set_permissions(&dest, wanted)?;
            }
        } else if kind.is_file() {
            sync_file(&entry.path(), &dest)?;
        } else if kind.is_symlink() {
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
        sync_tree(&pkg, &task).unwrap();
        assert_eq!(std::fs::read(task.join("lib/a.txt")).unwrap(), b"a");
        std::fs::write(task.join("run.sh"), "changed").unwrap();
        assert_eq!(std::fs::read(pkg.join("run.sh")).unwrap(), b"echo hi");
    }

    #[test]
    fn a_synced_copy_undoes_what_a_worker_changed_and_keeps_the_inodes_it_can() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("pkg");
        std::fs::create_dir_all(pkg.join("lib")).unwrap();
        std::fs::write(pkg.join("run.sh"), "echo a longer script").unwrap();
        std::fs::set_permissions(pkg.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(pkg.join("lib/a"), "a").unwrap();
        std::fs::write(pkg.join("data"), "d").unwrap();
        let task = dir.path().join("task");
        sync_tree(&pkg, &task).unwrap();
        let inode = |p: &Path| std::fs::symlink_metadata(p).unwrap().ino();
        let run_inode = inode(&task.join("run.sh"));
        // A worker shortens a file, takes its mode away, adds files, turns a file into a
        // directory, and links a package file to a file outside.
        std::fs::write(task.join("run.sh"), "x").unwrap();
        std::fs::set_permissions(task.join("run.sh"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(task.join("output"), "left").unwrap();
        std::fs::write(task.join("lib/b"), "left").unwrap();
        std::fs::remove_file(task.join("data")).unwrap();
        std::fs::create_dir(task.join("data")).unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "mine").unwrap();
        std::fs::remove_file(task.join("lib/a")).unwrap();
        std::fs::hard_link(&outside, task.join("lib/a")).unwrap();
        sync_tree(&pkg, &task).unwrap();
        assert_eq!(
            std::fs::read(task.join("run.sh")).unwrap(),
            b"echo a longer script"
        );
        let mode = std::fs::metadata(task.join("run.sh")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(inode(&task.join("run.sh")), run_inode, "rewritten in place");
        assert!(!task.join("output").exists() && !task.join("lib/b").exists());
        assert_eq!(std::fs::read(task.join("data")).unwrap(), b"d");
        assert_eq!(std::fs::read(task.join("lib/a")).unwrap(), b"a");
        assert_eq!(
            std::fs::read(&outside).unwrap(),
            b"mine",
            "a linked file is not written through"
        );
    }

    #[test]
    fn a_synced_copy_leaves_an_unchanged_file_unwritten_and_restores_a_changed_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("pkg");
        std::fs::create_dir_all(&pkg).unwrap();
        // Larger than one comparison chunk, so a change past the first one is found too.
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(pkg.join("big"), &big).unwrap();
        std::fs::write(pkg.join("run.sh"), "echo hi").unwrap();
        let task = dir.path().join("task");
        sync_tree(&pkg, &task).unwrap();
        let long_ago = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1);
        let mark = |name: &str| {
            let f = std::fs::File::options()
                .write(true)
                .open(task.join(name))
                .unwrap();
            f.set_modified(long_ago).unwrap();
        };
        let modified = |name: &str| {
            std::fs::metadata(task.join(name))
                .unwrap()
                .modified()
                .unwrap()
        };
        mark("big");
        mark("run.sh");
        sync_tree(&pkg, &task).unwrap();
        assert_eq!(
            modified("big"),
            long_ago,
            "an unchanged file is not written"
        );
        assert_eq!(modified("run.sh"), long_ago);
        // A worker changes bytes past the first chunk, keeping the length, and changes the
        // mode of a file whose contents it leaves alone.
        let mut changed = big.clone();
        changed[30_000] ^= 0xff;
        std::fs::write(task.join("big"), &changed).unwrap();
        std::fs::set_permissions(task.join("run.sh"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        sync_tree(&pkg, &task).unwrap();
        assert_eq!(std::fs::read(task.join("big")).unwrap(), big);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode(&task.join("run.sh")), mode(&pkg.join("run.sh")));
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
