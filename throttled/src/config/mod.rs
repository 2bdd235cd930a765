//! The config file and the declarative rules in `rules.d/*.toml`. Parsing is
//! all or nothing, and every error names the file, line, column and field.
use std::{
    fmt, fs, io,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{backend::NAMES, limit::LimitSpec, target::TargetSpec};

mod rules;
use rules::load_rules;
#[cfg(test)]
use rules::parse_rules;

pub const DEFAULT_CONFIG: &str = "/etc/chadthrottle/chadthrottled.toml";
const MAX_INTERVAL_SECS: i64 = 3600;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub state_dir: PathBuf,
    /// `None`: the interfaces carrying a default route.
    pub interfaces: Option<Vec<String>>,
    pub exempt_loopback: bool,
    /// A tracing filter (RUST_LOG syntax); the environment wins.
    pub log: Option<String>,
    pub defaults: Defaults,
    pub health: HealthConfig,
    pub monitor: MonitorConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    pub usage: UsageConfig,
    pub link: LinkCapacity,
}

/// The user's line rate, or just below it (`[link]`): the capacity that
/// throttles share by priority when it is contended. `None`: not set, and
/// priorities do nothing in that direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCapacity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<crate::Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<crate::Rate>,
}

impl LinkCapacity {
    pub fn get(&self, dir: throttle_common::Direction) -> Option<crate::Rate> {
        match dir {
            throttle_common::Direction::Up => self.up,
            throttle_common::Direction::Down => self.down,
        }
    }

    pub fn is_set(&self) -> bool {
        self.down.is_some() || self.up.is_some()
    }
}

/// The usage history (`usage.sqlite` in the state directory). Read at
/// start only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageConfig {
    pub enabled: bool,
    /// How often counts are written (one transaction each): what a
    /// `kill -9` can lose at most.
    pub flush_interval: Duration,
    /// How long hour rows are kept.
    pub retention: Duration,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            enabled: true,
            flush_interval: Duration::from_secs(60),
            retention: crate::usage::DEFAULT_RETENTION,
        }
    }
}

/// The Prometheus exporter; off unless `listen` or `textfile` is given.
/// Read at start only (a reload keeps the running exporter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where `/metrics` is served, e.g. 127.0.0.1:9559.
    pub listen: Option<std::net::SocketAddr>,
    /// A file for node_exporter's textfile collector, replaced atomically.
    pub textfile: Option<PathBuf>,
    pub textfile_interval: Duration,
    /// Process names shown (the busiest), to bound cardinality.
    pub top_names: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: None, textfile: None, textfile_interval: Duration::from_secs(15), top_names: 20 }
    }
}

/// Shares of the kernel's throttle slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Throttles one non-root uid may have created at a time, so that no
    /// single user can take every slot (root is never capped).
    pub per_user: u32,
}

/// The default `limits.per_user`.
pub const DEFAULT_PER_USER: u32 = 64;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { per_user: DEFAULT_PER_USER }
    }
}

/// Per-process traffic accounting for every process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Count in the kernel at all (takes effect at the next start).
    pub enabled: bool,
    /// The rolling window of a rate.
    pub window: Duration,
    /// One-second samples kept for graphs.
    pub history: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig { enabled: true, window: Duration::from_secs(5), history: 120 }
    }
}

/// Backend names for new throttles, per direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Defaults {
    pub up: Option<String>,
    pub down: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    pub interval: Duration,
    pub policy: FailurePolicy,
}

/// What happens to a backend whose kernel objects broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Re-create the kernel objects.
    #[default]
    Repair,
    /// Move its throttles to the next usable backend by priority.
    Failover,
    /// Only report it.
    None,
}

impl fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailurePolicy::Repair => "repair",
            FailurePolicy::Failover => "failover",
            FailurePolicy::None => "none",
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: "/var/lib/chadthrottle".into(),
            interfaces: None,
            exempt_loopback: true,
            log: None,
            defaults: Defaults::default(),
            health: HealthConfig { interval: Duration::from_secs(5), policy: FailurePolicy::Repair },
            monitor: MonitorConfig::default(),
            limits: LimitsConfig::default(),
            metrics: MetricsConfig::default(),
            usage: UsageConfig::default(),
            link: LinkCapacity::default(),
        }
    }
}

/// One `[[rule]]`: a target, limits and optional backends.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub source: PathBuf,
    /// As written: the manager resolves it (a cgroup's mount point).
    pub target: TargetSpec,
    pub spec: LimitSpec,
}

#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub rules: Vec<Rule>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The config file plus every `rules.d/*.toml` next to it, in name order.
/// A missing config file (or rules directory) means the defaults.
pub fn load(config_path: &Path) -> Result<Loaded, ConfigError> {
    let config = match fs::read_to_string(config_path) {
        Ok(text) => parse_config(config_path, &text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Config::default(),
        Err(e) => return Err(io_error(config_path, &e)),
    };
    let dir = config_path.parent().unwrap_or(Path::new(".")).join("rules.d");
    Ok(Loaded { config, rules: load_rules(&dir)? })
}

fn io_error(file: &Path, e: &io::Error) -> ConfigError {
    ConfigError { file: file.into(), line: None, column: None, message: format!("cannot read: {e}") }
}

/// Locates errors in one file's text.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let (line, column) = match span {
            Some(s) => {
                let before = &self.text[..s.start.min(self.text.len())];
                let line = before.matches('\n').count() + 1;
                (Some(line), Some(before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1))
            }
            None => (None, None),
        };
        ConfigError { file: self.file.into(), line, column, message: message.into() }
    }

    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|e| self.error(e.span(), e.message().trim()))
    }

    /// `field: message`, at the field's value.
    fn field<T>(&self, s: &Spanned<T>, field: &str, msg: impl fmt::Display) -> ConfigError {
        self.error(Some(s.span()), format!("{field}: {msg}"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<Spanned<String>>,
    interfaces: Option<Spanned<Vec<String>>>,
    exempt_loopback: Option<bool>,
    log: Option<Spanned<String>>,
    defaults: Option<RawDefaults>,
    health: Option<RawHealth>,
    monitor: Option<RawMonitor>,
    limits: Option<RawLimits>,
    metrics: Option<RawMetrics>,
    usage: Option<RawUsage>,
    link: Option<RawLink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    down: Option<Spanned<toml::Value>>,
    up: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUsage {
    enabled: Option<bool>,
    flush_secs: Option<Spanned<i64>>,
    retention_days: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
    textfile: Option<Spanned<String>>,
    textfile_interval_secs: Option<Spanned<i64>>,
    top_names: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    per_user: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    enabled: Option<bool>,
    window_secs: Option<Spanned<i64>>,
    history: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    up: Option<Spanned<String>>,
    down: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval_secs: Option<Spanned<i64>>,
    policy: Option<FailurePolicy>,
}

fn parse_config(file: &Path, text: &str) -> Result<Config, ConfigError> {
    let src = Source { file, text };
    let raw: RawConfig = src.parse()?;
    let mut c = Config::default();
    if let Some(d) = raw.state_dir {
        if !d.get_ref().starts_with('/') {
            return Err(src.field(&d, "state_dir", "must be an absolute path"));
        }
        c.state_dir = d.into_inner().into();
    }
    if let Some(i) = raw.interfaces {
        if let Some(bad) = i.get_ref().iter().find(|n| n.is_empty() || n.len() > 15 || n.contains(['/', ' '])) {
            return Err(src.field(&i, "interfaces", format!("{bad:?} is not an interface name")));
        }
        c.interfaces = Some(i.into_inner());
    }
    c.exempt_loopback = raw.exempt_loopback.unwrap_or(true);
    if let Some(l) = raw.log {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(l.get_ref()) {
            return Err(src.field(&l, "log", e));
        }
        c.log = Some(l.into_inner());
    }
    if let Some(d) = raw.defaults {
        c.defaults =
            Defaults { up: backend(&src, d.up, "defaults.up")?, down: backend(&src, d.down, "defaults.down")? };
    }
    if let Some(h) = raw.health {
        if let Some(i) = h.interval_secs {
            if !(1..=MAX_INTERVAL_SECS).contains(i.get_ref()) {
                return Err(src.field(&i, "health.interval_secs", format!("must be 1–{MAX_INTERVAL_SECS}")));
            }
            c.health.interval = Duration::from_secs(*i.get_ref() as u64);
        }
        c.health.policy = h.policy.unwrap_or_default();
    }
    if let Some(m) = raw.monitor {
        c.monitor = monitor(&src, m)?;
    }
    if let Some(m) = raw.metrics {
        c.metrics = metrics(&src, m)?;
    }
    if let Some(u) = raw.usage {
        c.usage = usage(&src, u)?;
    }
    if let Some(l) = raw.link {
        c.link = LinkCapacity {
            down: rules::rate(&src, l.down.as_ref(), "link.down")?,
            up: rules::rate(&src, l.up.as_ref(), "link.up")?,
        };
    }
    if let Some(p) = raw.limits.and_then(|l| l.per_user) {
        let max = i64::from(throttle_common::MAX_SLOTS - 1);
        if !(0..=max).contains(p.get_ref()) {
            return Err(src.field(&p, "limits.per_user", format!("must be 0–{max} throttles")));
        }
        c.limits.per_user = *p.get_ref() as u32;
    }
    Ok(c)
}

fn monitor(src: &Source<'_>, m: RawMonitor) -> Result<MonitorConfig, ConfigError> {
    let mut c = MonitorConfig { enabled: m.enabled.unwrap_or(true), ..Default::default() };
    if let Some(w) = m.window_secs {
        if !(1..=60).contains(w.get_ref()) {
            return Err(src.field(&w, "monitor.window_secs", "must be 1–60"));
        }
        c.window = Duration::from_secs(*w.get_ref() as u64);
    }
    if let Some(h) = m.history {
        if !(60..=3600).contains(h.get_ref()) {
            return Err(src.field(&h, "monitor.history", "must be 60–3600 samples"));
        }
        c.history = *h.get_ref() as usize;
    }
    Ok(c)
}

fn metrics(src: &Source<'_>, m: RawMetrics) -> Result<MetricsConfig, ConfigError> {
    let mut c = MetricsConfig::default();
    if let Some(l) = m.listen {
        let addr = l.get_ref().parse().map_err(|_| src.field(&l, "metrics.listen", "expected ADDRESS:PORT"))?;
        c.listen = Some(addr);
    }
    if let Some(t) = m.textfile {
        if !t.get_ref().starts_with('/') {
            return Err(src.field(&t, "metrics.textfile", "must be an absolute path"));
        }
        c.textfile = Some(t.into_inner().into());
    }
    if let Some(i) = m.textfile_interval_secs {
        if !(1..=MAX_INTERVAL_SECS).contains(i.get_ref()) {
            return Err(src.field(&i, "metrics.textfile_interval_secs", format!("must be 1–{MAX_INTERVAL_SECS}")));
        }
        c.textfile_interval = Duration::from_secs(*i.get_ref() as u64);
    }
    if let Some(n) = m.top_names {
        if !(0..=1000).contains(n.get_ref()) {
            return Err(src.field(&n, "metrics.top_names", "must be 0–1000"));
        }
        c.top_names = *n.get_ref() as usize;
    }
    Ok(c)
}

fn usage(src: &Source<'_>, u: RawUsage) -> Result<UsageConfig, ConfigError> {
    let mut c = UsageConfig { enabled: u.enabled.unwrap_or(true), ..Default::default() };
    if let Some(f) = u.flush_secs {
        // Not above a minute: a kill -9 loses at most a minute of counts.
        if !(1..=60).contains(f.get_ref()) {
            return Err(src.field(&f, "usage.flush_secs", "must be 1–60"));
        }
        c.flush_interval = Duration::from_secs(*f.get_ref() as u64);
    }
    if let Some(d) = u.retention_days {
        if !(1..=3650).contains(d.get_ref()) {
            return Err(src.field(&d, "usage.retention_days", "must be 1–3650"));
        }
        c.retention = Duration::from_secs(*d.get_ref() as u64 * 86400);
    }
    Ok(c)
}

fn backend(src: &Source<'_>, b: Option<Spanned<String>>, field: &str) -> Result<Option<String>, ConfigError> {
    match b {
        Some(b) if !NAMES.contains(&b.get_ref().as_str()) => {
            Err(src.field(&b, field, format!("unknown backend {:?} (known: {})", b.get_ref(), NAMES.join(", "))))
        }
        other => Ok(other.map(Spanned::into_inner)),
    }
}

#[cfg(test)]
mod tests;
