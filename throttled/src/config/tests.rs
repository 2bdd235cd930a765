use super::*;

const SHIPPED: &str = include_str!("../../../config/chadthrottled.toml");

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
    assert_eq!((c.metrics.textfile_interval, c.metrics.top_names), (d.metrics.textfile_interval, d.metrics.top_names));
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9559".parse().unwrap()));
    assert_eq!(c.link.down, Some("95M".parse().unwrap()), "the [link] example parses");
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
        ("[[rule]]\nname = \"x\"\nblock = true\ndown = \"1M\"\n", "block: a blocking rule takes no limits"),
        ("[[rule]]\nname = \"x\"\nblock = true\nbackend = \"ebpf\"\n", "block: a blocking rule takes no"),
        ("[[rule]]\nname = \"x\"\nblock = \"yes\"\n", "web.toml:3:9: invalid type: string \"yes\", expected a boolean"),
        ("[[rule]]\nname = \"x\"\nblock = false\n", "give a download (down) or an upload (up) limit"),
        ("[[rule]]\nname = \"x\"\ndown = \"1M\"\nbackend = \"block\"\n", "unknown backend \"block\""),
        ("[[rule]]\nname = \"x\"\nquota = \"5G\"\nthen = \"block\"\n", "web.toml:3:9: quota: quota \"5G\""),
        ("[[rule]]\nname = \"x\"\nquota = \"5G/day\"\n", "rule: a quota needs then"),
        ("[[rule]]\nname = \"x\"\ndown = \"1M\"\nwhen = \"Mon 9-5\"\n", "when: schedule \"Mon 9-5\""),
        ("[[rule]]\nname = \"x\"\ndown = \"1M\"\notherwise = \"2M\"\n", "rule: otherwise needs when"),
        ("[[rule]]\nname = \"x\"\nblock = true\nquota = \"1G/day\"\nthen = \"1M\"\n", "takes no quota"),
    ];
    for (text, want) in cases {
        let s = rules_err(text);
        assert!(s.contains(want) && s.starts_with("web.toml:"), "{text:?} → {s}");
    }
}

#[test]
fn a_rule_blocks() {
    let rules = parse_rules(Path::new("web.toml"), "[[rule]]\nname = \"ct-x\"\nblock = true\n").unwrap();
    assert_eq!(rules[0].0.spec, LimitSpec { block: true, ..Default::default() });
}

#[test]
fn rules_cap_a_user_or_everything() {
    use crate::target::{Target, TargetSpec};
    let text = "[[rule]]\nuser = \"alice\"\nup = \"5M\"\n[[rule]]\nall = true\ndown = \"20M\"\n";
    let rules = parse_rules(Path::new("caps.toml"), text).unwrap();
    assert_eq!(rules[0].0.target, TargetSpec::UserName { name: "alice".into() });
    assert_eq!(rules[1].0.target, TargetSpec::Ready(Target::All));
    assert!(rules_err("[[rule]]\nuser = \"Bad User\"\nup = \"1M\"\n").contains("user"));
    assert!(rules_err("[[rule]]\nall = false\nup = \"1M\"\n").contains("give exactly one target"));
    assert!(rules_err("[[rule]]\nall = true\nname = \"x\"\nup = \"1M\"\n").contains("exactly one target"));
}

#[test]
fn a_rule_has_a_quota_and_a_schedule() {
    let text = "[[rule]]\nname = \"ct-x\"\ndown = \"1M\"\nquota = \"5G/month\"\nthen = \"block\"\nwhen = \"Mon-Fri 09:00-17:00\"\notherwise = \"4M\"\n";
    let spec = parse_rules(Path::new("web.toml"), text).unwrap().remove(0).0.spec;
    assert_eq!(spec.quota.unwrap().to_string(), "5G/month");
    assert_eq!(spec.then, Some(crate::quota::Then::Block));
    assert_eq!(spec.when.unwrap().to_string(), "Mon-Fri 09:00-17:00");
    assert_eq!(spec.otherwise, Some("4M".parse().unwrap()));
    let prio = "[[rule]]\nname = \"ct-x\"\npriority = \"high\"\n";
    let spec = parse_rules(Path::new("web.toml"), prio).unwrap().remove(0).0.spec;
    assert_eq!(spec.priority, Some(crate::limit::Priority::High));
    assert!(rules_err("[[rule]]\nname = \"x\"\npriority = \"urgent\"\n").contains("priority: priority is low, normal"));
    let quota_only = "[[rule]]\nname = \"ct-x\"\nquota = \"1G/day\"\nthen = \"256K\"\n";
    assert!(parse_rules(Path::new("web.toml"), quota_only).is_ok(), "a quota needs no rate of its own");
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
