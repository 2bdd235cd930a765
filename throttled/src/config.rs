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

use crate::{backend::NAMES, limit::LimitSpec, target::TargetSpec, Rate};

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

fn backend(src: &Source<'_>, b: Option<Spanned<String>>, field: &str) -> Result<Option<String>, ConfigError> {
    match b {
        Some(b) if !NAMES.contains(&b.get_ref().as_str()) => {
            Err(src.field(&b, field, format!("unknown backend {:?} (known: {})", b.get_ref(), NAMES.join(", "))))
        }
        other => Ok(other.map(Spanned::into_inner)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Spanned<String>>,
    exe: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
    unit: Option<Spanned<String>>,
    pid: Option<Spanned<toml::Value>>,
    down: Option<Spanned<toml::Value>>,
    up: Option<Spanned<toml::Value>>,
    backend: Option<Spanned<String>>,
    up_backend: Option<Spanned<String>>,
    down_backend: Option<Spanned<String>>,
}

fn load_rules(dir: &Path) -> Result<Vec<Rule>, ConfigError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir, &e)),
    };
    let mut files: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    files.sort();
    let mut rules: Vec<Rule> = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).map_err(|e| io_error(&file, &e))?;
        for (rule, span) in parse_rules(&file, &text)? {
            if let Some(first) = rules.iter().find(|r| r.target == rule.target) {
                let msg = format!("{} is already limited by a rule in {}", rule.target, first.source.display());
                return Err(Source { file: &file, text: &text }.error(Some(span), msg));
            }
            rules.push(rule);
        }
    }
    Ok(rules)
}

/// One rules file; each rule with where it starts.
fn parse_rules(file: &Path, text: &str) -> Result<Vec<(Rule, Range<usize>)>, ConfigError> {
    let src = Source { file, text };
    let raw: RulesFile = src.parse()?;
    raw.rule.into_iter().map(|r| rule(&src, r)).collect()
}

fn rule(src: &Source<'_>, raw: Spanned<RawRule>) -> Result<(Rule, Range<usize>), ConfigError> {
    let span = raw.span();
    let r = raw.into_inner();
    if let Some(p) = &r.pid {
        let msg = "pid targets cannot be rules: pids do not survive a reboot; use name, exe, cgroup or unit";
        return Err(src.field(p, "pid", msg));
    }
    let target = target(src, &r, span.clone())?;
    let down = rate(src, r.down.as_ref(), "down")?;
    let up = rate(src, r.up.as_ref(), "up")?;
    if down.is_none() && up.is_none() {
        return Err(src.error(Some(span), "rule: give a download (down) or an upload (up) limit"));
    }
    if let (Some(_), Some(b)) = (&r.backend, r.up_backend.as_ref().or(r.down_backend.as_ref())) {
        return Err(src.field(b, "backend", "give either backend or up_backend/down_backend, not both"));
    }
    for (b, has, field) in
        [(&r.up_backend, up.is_some(), "up_backend"), (&r.down_backend, down.is_some(), "down_backend")]
    {
        if let Some(b) = b.as_ref().filter(|_| !has) {
            return Err(src.field(b, field, "names a backend for a direction without a limit"));
        }
    }
    let spec = LimitSpec {
        down,
        up,
        backend: backend(src, r.backend, "backend")?,
        up_backend: backend(src, r.up_backend, "up_backend")?,
        down_backend: backend(src, r.down_backend, "down_backend")?,
    };
    let rule = Rule { source: src.file.into(), target, spec };
    Ok((rule, span))
}

/// The rule's target, its form checked only: nothing is read from the system.
fn target(src: &Source<'_>, r: &RawRule, span: Range<usize>) -> Result<TargetSpec, ConfigError> {
    let keys: [(&str, &Option<Spanned<String>>); 4] =
        [("name", &r.name), ("exe", &r.exe), ("cgroup", &r.cgroup), ("unit", &r.unit)];
    let given: Vec<_> = keys.iter().filter_map(|(k, v)| v.as_ref().map(|v| (*k, v))).collect();
    match given[..] {
        [(key, value)] => TargetSpec::parse(key, value.get_ref()).map_err(|e| src.field(value, key, e)),
        [] => Err(src.error(Some(span), "rule: give exactly one target: name, exe, cgroup or unit")),
        [_, (key, value), ..] => {
            Err(src.field(value, key, "a rule has exactly one target (name, exe, cgroup or unit)"))
        }
    }
}

fn rate(src: &Source<'_>, v: Option<&Spanned<toml::Value>>, field: &str) -> Result<Option<Rate>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let parsed = match v.get_ref() {
        toml::Value::String(s) => s.parse::<Rate>().map_err(|e| e.to_string()),
        toml::Value::Integer(i) => u64::try_from(*i)
            .map_err(|_| "rate must be greater than zero".to_string())
            .and_then(|b| Rate::from_bytes(b).map_err(|e| e.to_string())),
        other => Err(format!("expected a rate such as \"1M\", found a {}", other.type_str())),
    };
    parsed.map(Some).map_err(|e| src.field(v, field, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../config/chadthrottled.toml");

    #[test]
    fn shipped_config_is_the_defaults() {
        assert_eq!(parse_config(Path::new("shipped.toml"), SHIPPED).unwrap(), Config::default());
    }

    /// Every commented-out key is valid, and the documented defaults are the real ones.
    #[test]
    fn shipped_config_documents_the_real_defaults() {
        let uncommented: String =
            SHIPPED.lines().map(|l| if is_commented_key(l) { &l[1..] } else { l }).flat_map(|l| [l, "\n"]).collect();
        let c = parse_config(Path::new("uncommented.toml"), &uncommented).unwrap();
        let d = Config::default();
        assert_eq!((c.state_dir, c.exempt_loopback, c.health), (d.state_dir, d.exempt_loopback, d.health));
        assert_eq!((c.monitor, c.limits), (d.monitor, d.limits));
        assert_eq!(c.interfaces, Some(vec!["eth0".into(), "wlan0".into()]));
        assert_eq!(
            (c.metrics.textfile_interval, c.metrics.top_names),
            (d.metrics.textfile_interval, d.metrics.top_names)
        );
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9559".parse().unwrap()));
    }

    /// `#name = value` lines (not prose, not the indented rule example).
    fn is_commented_key(l: &str) -> bool {
        l.strip_prefix('#')
            .and_then(|r| r.split_once(" = "))
            .is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    }

    struct Tmp(PathBuf);

    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let p = std::env::temp_dir().join(format!("ct-config-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(p.join("rules.d")).unwrap();
            Tmp(p)
        }
        fn conf(&self, text: &str) -> PathBuf {
            let p = self.0.join("chadthrottled.toml");
            fs::write(&p, text).unwrap();
            p
        }
        fn rule(&self, name: &str, text: &str) {
            fs::write(self.0.join("rules.d").join(name), text).unwrap();
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn rules_err(text: &str) -> String {
        parse_rules(Path::new("web.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn missing_file_means_defaults() {
        let l = load(Path::new("/nonexistent/ct/chadthrottled.toml")).unwrap();
        assert_eq!(l.config, Config::default());
        assert!(l.rules.is_empty());
    }

    #[test]
    fn full_example_parses() {
        let t = Tmp::new("full");
        let conf = t.conf(
            "state_dir = \"/var/lib/x\"\ninterfaces = [\"eth0\"]\nexempt_loopback = false\nlog = \"debug\"\n\
             [defaults]\nup = \"tc_htb\"\ndown = \"ifb_tc\"\n[health]\ninterval_secs = 2\npolicy = \"failover\"\n",
        );
        t.rule("b.toml", "[[rule]]\nname = \"firefox\"\ndown = \"1M\"\nup = 2048\nbackend = \"ebpf\"\n");
        t.rule("a.toml", "[[rule]]\nunit = \"backup.service\"\nup = \"10mbit\"\nup_backend = \"tc_htb\"\n");
        t.rule("c.txt", "not toml");
        let l = load(&conf).unwrap();
        assert_eq!(l.config.interfaces, Some(vec!["eth0".into()]));
        assert_eq!(l.config.health, HealthConfig { interval: Duration::from_secs(2), policy: FailurePolicy::Failover });
        assert_eq!(l.config.defaults.down.as_deref(), Some("ifb_tc"));
        assert!(!l.config.exempt_loopback);
        let targets: Vec<String> = l.rules.iter().map(|r| r.target.to_string()).collect();
        assert_eq!(targets, ["unit backup.service", "name firefox"], "file-name order");
        assert_eq!(l.rules[1].spec.up.unwrap().bytes_per_sec(), 2048);
        assert!(l.rules[0].source.ends_with("a.toml"));
    }

    #[test]
    fn config_errors_name_file_line_and_field() {
        let cases = [
            ("statedir = \"/x\"\n", "unknown field `statedir`"),
            ("[defaults]\nup = \"fast\"\n", "defaults.up: unknown backend"),
            ("[health]\ninterval_secs = 0\n", "health.interval_secs"),
            ("[monitor]\nwindow_secs = 0\n", "monitor.window_secs"),
            ("[monitor]\nhistory = 10\n", "monitor.history"),
            ("[monitor]\nenable = true\n", "unknown field"),
            ("[limits]\nper_user = -1\n", "limits.per_user: must be 0–4095"),
            ("[limits]\nper_user = 4096\n", "limits.per_user"),
            ("[limits]\nper_uid = 3\n", "unknown field `per_uid`"),
            ("[metrics]\nlisten = \"localhost\"\n", "metrics.listen: expected ADDRESS:PORT"),
            ("[metrics]\ntextfile = \"m.prom\"\n", "metrics.textfile: must be an absolute path"),
            ("[metrics]\ntop_names = 1001\n", "metrics.top_names"),
            ("[metrics]\ntextfile_interval_secs = 0\n", "metrics.textfile_interval_secs"),
            ("[health]\npolicy = \"reboot\"\n", "unknown variant `reboot`"),
            ("state_dir = \"relative\"\n", "state_dir: must be an absolute path"),
            ("interfaces = [\"a b\"]\n", "interfaces"),
            ("log = \"[[[\"\n", "log:"),
            ("x = \n", "chadthrottled.toml:1"),
        ];
        for (text, want) in cases {
            let e = parse_config(Path::new("/etc/chadthrottle/chadthrottled.toml"), text).unwrap_err();
            let s = e.to_string();
            assert!(s.contains(want) && e.line.is_some(), "{text:?} → {s}");
            assert!(s.starts_with("/etc/chadthrottle/chadthrottled.toml:"), "{s}");
        }
        let e = parse_config(Path::new("c.toml"), "log = \"info\"\n[health]\ninterval_secs = 99999\n").unwrap_err();
        assert_eq!((e.line, e.column), (Some(3), Some(17)), "{e}");
    }

    #[test]
    fn rule_errors_name_file_line_and_field() {
        let cases = [
            ("[[rule]]\nname = \"x\"\ndown = \"1Q\"\n", "web.toml:3:8: down: unknown unit"),
            ("[[rule]]\nname = \"x\"\ndown = 0\n", "down: rate must be greater than zero"),
            ("[[rule]]\nname = \"x\"\nup = -1\n", "up: rate must be greater than zero"),
            ("[[rule]]\nname = \"x\"\nup = true\n", "up: expected a rate"),
            ("[[rule]]\nname = \"x\"\n", "give a download (down) or an upload (up) limit"),
            ("[[rule]]\ndown = \"1M\"\n", "give exactly one target"),
            ("[[rule]]\nname = \"x\"\nexe = \"/y\"\ndown = \"1M\"\n", "exe: a rule has exactly one target"),
            ("[[rule]]\npid = 12\ndown = \"1M\"\n", "pid: pid targets cannot be rules"),
            ("[[rule]]\nname = \"a/b\"\ndown = \"1M\"\n", "name: invalid target"),
            ("[[rule]]\nunit = \"foo\"\ndown = \"1M\"\n", "unit: invalid target"),
            ("[[rule]]\nexe = \"bin/x\"\ndown = \"1M\"\n", "exe: invalid target"),
            ("[[rule]]\nname = \"x\"\ndown = \"1M\"\nbackend = \"nope\"\n", "backend: unknown backend \"nope\""),
            ("[[rule]]\nname = \"x\"\ndown = \"1M\"\nup_backend = \"tc_htb\"\n", "up_backend: names a backend"),
            ("[[rule]]\nname = \"x\"\ndown = \"1M\"\nbackend = \"ebpf\"\ndown_backend = \"ebpf\"\n", "not both"),
            ("[[rule]]\nname = \"x\"\ndown = \"1M\"\nspeed = 3\n", "unknown field `speed`"),
            ("[[rules]]\nname = \"x\"\n", "unknown field `rules`"),
        ];
        for (text, want) in cases {
            let s = rules_err(text);
            assert!(s.contains(want) && s.starts_with("web.toml:"), "{text:?} → {s}");
        }
    }

    #[test]
    fn the_same_target_twice_is_refused_naming_both_files() {
        let t = Tmp::new("dup");
        t.rule("a.toml", "[[rule]]\nname = \"x\"\ndown = \"1M\"\n");
        t.rule("b.toml", "[[rule]]\nname = \"x\"\nup = \"1M\"\n");
        let e = load(&t.0.join("chadthrottled.toml")).unwrap_err();
        assert!(e.file.ends_with("b.toml") && e.message.contains("a.toml"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(throttle_testkit::fuzz_cases(3000)))]
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse_config(Path::new("c.toml"), &text);
            let _ = parse_rules(Path::new("r.toml"), &text);
        }

        #[test]
        fn rule_shaped_text_never_panics(
            key in "(name|exe|unit|cgroup|pid|down|up|backend)",
            value in "(\"[^\"\\\\]{0,20}\"|-?[0-9]{1,20}|true|\\[\\])",
        ) {
            let text = format!("[[rule]]\n{key} = {value}\ndown = {value}\n");
            let _ = parse_rules(Path::new("r.toml"), &text);
        }
    }
}
