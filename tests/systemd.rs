//! The unit file: verified by systemd itself and scored by its security
//! analysis (the issue's bound is 3.5).
mod common;

use std::process::Command;

use common::*;

/// A copy of the unit whose ExecStart points at the binary just built, so
/// `verify` can check it.
fn unit_copy(dir: &ScratchDir) -> std::path::PathBuf {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/chadthrottled.service")).unwrap();
    let p = dir.path.join("chadthrottled.service");
    std::fs::write(&p, unit.replace("/usr/sbin/chadthrottled", daemon_bin())).unwrap();
    p
}

fn analyze() -> Option<std::path::PathBuf> {
    let a = which("systemd-analyze");
    if a.is_none() {
        throttle_testkit::missing("systemd-analyze is not installed (run scripts/bootstrap.sh)");
    }
    a
}

#[test]
fn unit_verifies_without_warnings() {
    let Some(a) = analyze() else { return };
    let dir = ScratchDir::new("unit-verify");
    let out = Command::new(a).args(["verify", "--man=no"]).arg(unit_copy(&dir)).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

#[test]
fn unit_security_exposure_is_at_most_3_5() {
    let Some(a) = analyze() else { return };
    let dir = ScratchDir::new("unit-security");
    let out =
        Command::new(a).args(["security", "--offline=yes", "--threshold=35"]).arg(unit_copy(&dir)).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let overall = text.lines().find(|l| l.contains("Overall exposure")).unwrap_or_default().to_string();
    assert!(out.status.success(), "exposure above 3.5: {overall}");
    eprintln!("{overall}");
}

#[test]
fn unit_has_what_the_bus_and_manager_expect() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/chadthrottled.service")).unwrap();
    for want in [
        "Type=notify",
        "BusName=org.chadthrottle",
        "WatchdogSec=",
        "ExecReload=",
        "Restart=on-failure",
        "StateDirectory=chadthrottle",
        "ConfigurationDirectory=chadthrottle",
        "Alias=dbus-org.chadthrottle.service",
    ] {
        assert!(unit.contains(want), "the unit lacks {want}");
    }
    let svc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dbus/org.chadthrottle.service")).unwrap();
    assert!(svc.contains("SystemdService=dbus-org.chadthrottle.service"));
}

/// Fields of one journal native-protocol datagram (`KEY=value\n`, or
/// `KEY\n` + little-endian u64 length + value + `\n` for binary values).
fn journal_fields(mut d: &[u8]) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    while let Some(nl) = d.iter().position(|&b| b == b'\n') {
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            out.insert(String::from_utf8_lossy(&line[..eq]).into(), String::from_utf8_lossy(&line[eq + 1..]).into());
            d = &d[nl + 1..];
        } else {
            let len = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
            let value = &d[nl + 9..nl + 9 + len];
            out.insert(String::from_utf8_lossy(line).into(), String::from_utf8_lossy(value).into());
            d = &d[(nl + 10 + len).min(d.len())..];
        }
    }
    out
}

/// Under systemd (JOURNAL_STREAM names our stderr) the daemon logs to
/// journald with structured fields. The test owns the "journald" socket,
/// mounted over /run/systemd/journal in a private mount namespace.
#[test]
fn logs_reach_journald_with_structured_fields() {
    use std::os::unix::{fs::MetadataExt as _, net::UnixDatagram};
    let Some(_guard) = begin() else { return };
    let dir = ScratchDir::new("journald");
    let jdir = dir.path.join("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    let sock = UnixDatagram::bind(jdir.join("socket")).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
    let stderr = dir.path.join("stderr");
    let meta = std::fs::File::create(&stderr).unwrap().metadata().unwrap();
    let conf = dir.path.join("chadthrottled.toml");
    std::fs::write(&conf, format!("state_dir = {:?}\n", dir.path.join("state").display().to_string())).unwrap();
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = target.id().to_string();
    let script = r#"mount -t tmpfs ct-run /run && mkdir -p /run/systemd/journal &&
        mount --bind "$0" /run/systemd/journal && exec "$@" 2>>"$CT_STDERR""#;
    let daemon = daemon_bin();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut d = Daemon::start(
        "unshare",
        &["-m", "--propagation", "private", "sh", "-c", script, jdir.to_str().unwrap(), daemon]
            .into_iter()
            .chain(["--config", conf.to_str().unwrap(), "--no-dbus", "--pid", &pid, "--down", "1M"])
            .chain(["--backend", "ebpf"])
            .collect::<Vec<_>>(),
        &[
            ("JOURNAL_STREAM", stream.as_str()),
            ("CT_STDERR", stderr.to_str().unwrap()),
            ("RUST_LOG", "info,throttled::manager=debug"),
        ],
    );
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = sock.recv(&mut buf) {
        entries.push(journal_fields(&buf[..n]));
    }
    d.stop();
    let _ = target.kill();
    let _ = target.wait();
    let find = |msg: &str| entries.iter().find(|e| e.get("MESSAGE").is_some_and(|m| m == msg)).cloned();
    let applied = find("limit applied").unwrap_or_else(|| panic!("no 'limit applied' entry in {entries:#?}"));
    assert_eq!(applied.get("BACKEND").map(String::as_str), Some("ebpf"));
    assert!(applied.contains_key("THROTTLE_ID"));
    assert_eq!(applied.get("SYSLOG_IDENTIFIER").map(String::as_str), Some("chadthrottled"));
    assert_eq!(applied.get("PRIORITY").map(String::as_str), Some("6"));
    let covered = find("process covered").expect("no 'process covered' entry");
    assert_eq!(covered.get("PID"), Some(&pid));
    assert_eq!(covered.get("THROTTLE_ID"), applied.get("THROTTLE_ID"));
    let text = std::fs::read_to_string(&stderr).unwrap();
    assert!(!text.contains("limit applied"), "logs also went to stderr: {text}");
}

/// Logs written to a file (not a terminal) are plain text, and limits read
/// as users write them: `down=1M`, not `Some(Rate(1048576))`.
#[test]
fn logs_to_a_file_are_plain_text_in_user_terms() {
    let Some(_guard) = begin() else { return };
    let dir = ScratchDir::new("plainlog");
    let conf = dir.path.join("chadthrottled.toml");
    std::fs::write(&conf, format!("state_dir = {:?}\n", dir.path.join("state").display().to_string())).unwrap();
    let log = dir.path.join("log");
    let target = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
    let pid = target.id().to_string();
    let args = ["--config", conf.to_str().unwrap(), "--no-dbus", "--log-target", "stderr", "--pid", &pid];
    let mut d = Daemon::start_logged(
        daemon_bin(),
        &args.into_iter().chain(["--down", "1M", "--backend", "ebpf"]).collect::<Vec<_>>(),
        &[("RUST_LOG", "info")],
        &log,
    );
    d.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("throttle added"), "{text}");
    assert!(!text.contains('\x1b'), "ANSI escapes in a log file: {text:?}");
    assert!(text.contains("down=1M") && text.contains("up=none"), "{text}");
    assert!(!text.contains("Some(") && !text.contains("Rate("), "{text}");
}

/// `--check-config` parses the config and rules as a start does, says what
/// it found, and touches nothing: no state directory, no kernel object.
#[test]
fn check_config_validates_without_touching_anything() {
    let dir = ScratchDir::new("checkconfig");
    let state = dir.path.join("state");
    let conf = dir.path.join("chadthrottled.toml");
    std::fs::write(&conf, format!("state_dir = {:?}\n", state.display().to_string())).unwrap();
    let rules = dir.path.join("rules.d");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("10-web.toml"), "[[rule]]\nname = \"firefox\"\ndown = \"1M\"\n").unwrap();
    let run = |args: &[&str]| Command::new(daemon_bin()).args(args).output().unwrap();
    let out = run(&["--check-config", conf.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("valid; 1 rule(s) in 1 file(s)"), "{stdout}");
    // Without a path: the --config file.
    let out = run(&["--config", conf.to_str().unwrap(), "--check-config"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(rules.join("20-bad.toml"), "[[rule]]\nname = \"steam\"\ndown = \"fast\"\n").unwrap();
    let out = run(&["--check-config", conf.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("20-bad.toml") && stderr.contains("down"), "{stderr}");
    assert!(!state.exists(), "--check-config created the state directory");
}
