//! The metrics as a file for node_exporter's textfile collector, replaced
//! atomically: a temp file in the same directory, fsync, rename, fsync of
//! the directory. The collector never reads a half-written file.
use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use super::{encode::Format, server::Exporter};

/// Writes `contents` to `path` atomically.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = temp_path(path);
    let result = write_new(&tmp, contents).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    fs::File::open(dir)?.sync_all()
}

/// `.NAME.PID.tmp` beside the file: node_exporter reads `*.prom` only.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

fn write_new(tmp: &Path, contents: &[u8]) -> io::Result<()> {
    // A leftover of a crash with the same pid is ours to replace.
    let _ = fs::remove_file(tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(tmp)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Rewrites the file every `every` until the task is aborted; a failed
/// write is logged and tried again at the next tick.
pub async fn run(path: PathBuf, every: Duration, exporter: Arc<Exporter>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The collector reads the text format (no `# EOF`).
        let body = exporter.render(Format::Prometheus).await;
        let p = path.clone();
        match tokio::task::spawn_blocking(move || write_atomic(&p, body.as_bytes())).await {
            Ok(Ok(())) => tracing::trace!(path = %path.display(), "metrics textfile written"),
            Ok(Err(e)) => tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics textfile"),
            Err(e) => tracing::warn!(error = %e, "metrics textfile writer failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_atomically_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("ct-textfile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chadthrottle.prom");
        write_atomic(&path, b"a 1\n").unwrap();
        write_atomic(&path, b"a 2\n").unwrap();
        let text = fs::read_to_string(&path);
        let entries: Vec<_> = fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text.unwrap(), "a 2\n");
        assert_eq!(entries, vec![std::ffi::OsString::from("chadthrottle.prom")]);
    }
}
