//! Where the logs go: to journald, with structured fields (THROTTLE_ID, PID,
//! BACKEND, ...), when stderr is the journal or when asked; otherwise to
//! stderr. The filter is `RUST_LOG`, else the config's `log`, else `info`.
use std::os::unix::fs::MetadataExt as _;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _, EnvFilter};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTarget {
    /// journald when systemd connected stderr to the journal, else stderr.
    Auto,
    Stderr,
    Journald,
}

/// Installs the global subscriber and says where it writes.
pub fn init(target: LogTarget, config_filter: Option<&str>) -> &'static str {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(config_filter.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let want_journal = match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => stderr_is_journal(),
    };
    let journal = want_journal.then(tracing_journald::layer).and_then(|r| {
        r.inspect_err(|e| eprintln!("chadthrottled: journald unavailable ({e}); logging to stderr")).ok()
    });
    let registry = tracing_subscriber::registry().with(filter);
    match journal {
        Some(j) => {
            registry
                .with(
                    j.with_field_prefix(None)
                        .with_syslog_identifier("chadthrottled".into())
                        .with_priority_mappings(priorities()),
                )
                .init();
            "journald"
        }
        None => {
            let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(colour());
            registry.with(fmt).init();
            "stderr"
        }
    }
}

/// Colours only for a person at a terminal: a log file, a pipe or a
/// service manager gets plain text (and `NO_COLOR` is honoured).
fn colour() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Routine info is "informational" (6) to journald, not "notice" (5).
fn priorities() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// systemd sets `JOURNAL_STREAM=dev:inode` of the stream it gave us; it only
/// counts if stderr is still that stream (see systemd.exec(5)).
fn stderr_is_journal() -> bool {
    let Ok(want) = std::env::var("JOURNAL_STREAM") else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    stream_matches(&want, meta.dev(), meta.ino())
}

fn stream_matches(journal_stream: &str, dev: u64, ino: u64) -> bool {
    journal_stream.split_once(':').is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_this_stderr() {
        assert!(stream_matches("12:345", 12, 345));
        assert!(!stream_matches("12:346", 12, 345));
        assert!(!stream_matches("garbage", 12, 345));
        assert!(!stream_matches("", 12, 345));
    }
}
