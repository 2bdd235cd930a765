//! `make install` into a DESTDIR: the packager layout, file by file, the
//! paths written into the unit and activation file, the admin's config kept,
//! and an uninstall that leaves no file behind.
mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use common::*;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn build_dir() -> PathBuf {
    Path::new(daemon_bin()).parent().unwrap().to_path_buf()
}

/// Runs `make TARGET` with these variables; returns stdout.
fn make(target: &str, vars: &[(&str, &str)]) -> String {
    let Some(mk) = which("make") else {
        throttle_testkit::missing("make is not installed (run scripts/bootstrap.sh)");
        return String::new();
    };
    let mut cmd = Command::new(mk);
    cmd.current_dir(ROOT).args(["-s", target]).arg(format!("BUILD_DIR={}", build_dir().display()));
    for (k, v) in vars {
        cmd.arg(format!("{k}={v}"));
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "make {target}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn files_under(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                out.insert(format!("/{}", p.strip_prefix(root).unwrap().display()));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn read(stage: &Path, file: &str) -> String {
    std::fs::read_to_string(stage.join(file.trim_start_matches('/'))).unwrap()
}

const PACKAGE_FILES: &[&str] = &[
    "/etc/chadthrottle/chadthrottled.toml",
    "/usr/bin/throttlectl",
    "/usr/lib/systemd/system/chadthrottled.service",
    "/usr/sbin/chadthrottled",
    "/usr/share/bash-completion/completions/throttlectl",
    "/usr/share/dbus-1/interfaces/org.chadthrottle.Manager.xml",
    "/usr/share/dbus-1/interfaces/org.chadthrottle.Throttle.xml",
    "/usr/share/dbus-1/system-services/org.chadthrottle.service",
    "/usr/share/dbus-1/system.d/org.chadthrottle.conf",
    "/usr/share/doc/chadthrottle/chadthrottled.toml",
    "/usr/share/fish/vendor_completions.d/throttlectl.fish",
    "/usr/share/man/man1/throttlectl.1",
    "/usr/share/man/man8/chadthrottled.8",
    "/usr/share/polkit-1/actions/org.chadthrottle.policy",
    "/usr/share/zsh/site-functions/_throttlectl",
];

#[test]
fn packager_layout_and_clean_uninstall() {
    let dir = ScratchDir::new("install-usr");
    let stage = dir.path.join("root");
    let d = stage.to_str().unwrap();
    make("install-files", &[("PREFIX", "/usr"), ("DESTDIR", d)]);
    let want: BTreeSet<String> = PACKAGE_FILES.iter().map(|s| s.to_string()).collect();
    assert_eq!(files_under(&stage), want);
    assert!(stage.join("etc/chadthrottle/rules.d").is_dir());
    assert_eq!(make("list", &[("PREFIX", "/usr")]).lines().filter(|l| !l.ends_with('/')).count(), want.len());

    let unit = read(&stage, "/usr/lib/systemd/system/chadthrottled.service");
    assert!(unit.contains("\nExecStart=/usr/sbin/chadthrottled\n"), "{unit}");
    let activation = read(&stage, "/usr/share/dbus-1/system-services/org.chadthrottle.service");
    assert!(activation.contains("\nExec=/usr/sbin/chadthrottled\n"), "{activation}");
    let man8 = read(&stage, "/usr/share/man/man8/chadthrottled.8");
    assert!(man8.contains(".TH chadthrottled 8") && man8.contains(".SH FILES") && man8.contains(".SH SIGNALS"));
    assert!(read(&stage, "/usr/share/man/man1/throttlectl.1").contains(".TH throttlectl 1"));
    // The scripts call back into throttlectl for live candidates.
    for f in [
        "bash-completion/completions/throttlectl",
        "zsh/site-functions/_throttlectl",
        "fish/vendor_completions.d/throttlectl.fish",
    ] {
        assert!(read(&stage, &format!("/usr/share/{f}")).contains("COMPLETE="), "{f}");
    }
    let v = Command::new(stage.join("usr/sbin/chadthrottled")).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("chadthrottled "));

    make("uninstall-files", &[("PREFIX", "/usr"), ("DESTDIR", d)]);
    assert_eq!(files_under(&stage), BTreeSet::new(), "uninstall left files");
    assert!(!stage.join("etc/chadthrottle").exists() && !stage.join("usr/share/doc/chadthrottle").exists());
}

#[test]
fn installed_xml_is_well_formed() {
    let Some(xmllint) = which("xmllint") else {
        throttle_testkit::missing("xmllint is not installed (run scripts/bootstrap.sh)");
        return;
    };
    let dir = ScratchDir::new("install-xml");
    let stage = dir.path.join("root");
    make("install-files", &[("PREFIX", "/usr"), ("DESTDIR", stage.to_str().unwrap())]);
    for f in PACKAGE_FILES.iter().filter(|f| f.ends_with(".xml") || f.ends_with(".conf") || f.ends_with(".policy")) {
        let out = Command::new(&xmllint).arg("--noout").arg(stage.join(&f[1..])).output().unwrap();
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A /usr/local install puts the bus policy where dbus-daemon reads it, and
/// a non-default config directory reaches the daemon's command line.
#[test]
fn local_prefix_layout() {
    let dir = ScratchDir::new("install-local");
    let stage = dir.path.join("root");
    let d = stage.to_str().unwrap();
    let vars = [("PREFIX", "/usr/local"), ("SYSCONFDIR", "/etc/ct-alt"), ("DESTDIR", d)];
    make("install-files", &vars);
    let files = files_under(&stage);
    for f in [
        "/etc/ct-alt/dbus-1/system.d/org.chadthrottle.conf",
        "/usr/share/polkit-1/actions/org.chadthrottle.policy",
        "/usr/local/lib/systemd/system/chadthrottled.service",
        "/usr/local/sbin/chadthrottled",
        "/etc/ct-alt/chadthrottle/chadthrottled.toml",
    ] {
        assert!(files.contains(f), "{f} missing from {files:#?}");
    }
    let unit = read(&stage, "/usr/local/lib/systemd/system/chadthrottled.service");
    let exec = "ExecStart=/usr/local/sbin/chadthrottled --config /etc/ct-alt/chadthrottle/chadthrottled.toml\n";
    assert!(unit.contains(exec), "{unit}");
    make("uninstall-files", &vars);
    assert_eq!(files_under(&stage), BTreeSet::new());
}

/// The admin's config survives both a reinstall and an uninstall.
#[test]
fn edited_config_is_never_overwritten_or_removed() {
    let dir = ScratchDir::new("install-conf");
    let stage = dir.path.join("root");
    let vars = [("PREFIX", "/usr"), ("DESTDIR", stage.to_str().unwrap())];
    let conf = stage.join("etc/chadthrottle/chadthrottled.toml");
    std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
    std::fs::write(&conf, "[defaults]\nup = \"tc_htb\"\n").unwrap();
    let said = make("install-files", &vars);
    assert!(said.contains("kept the existing"), "{said}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "[defaults]\nup = \"tc_htb\"\n");
    let said = make("uninstall-files", &vars);
    assert!(said.contains("(edited)"), "{said}");
    assert_eq!(files_under(&stage), BTreeSet::from(["/etc/chadthrottle/chadthrottled.toml".to_string()]));
}
