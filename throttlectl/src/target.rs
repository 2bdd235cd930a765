//! Local hints about a target before the daemon is asked: an executable
//! that does not exist, or a unit with no cgroup, is legal (the throttle
//! waits for it) but often a typo, so the user is warned.
use std::path::Path;

use throttle_common::mountinfo::cgroup2_mount;

/// The warning for `kind`/`value`, if its target is nowhere to be seen now.
pub fn absent(kind: &str, value: &str) -> Option<String> {
    match kind {
        "exe" if !Path::new(value).exists() => {
            Some(format!("{value} does not exist; the throttle applies when a process runs it"))
        }
        "unit" => {
            let root = cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)?;
            (!has_dir_named(&root, value, 64))
                .then(|| format!("no unit {value} is running; the throttle applies when it starts"))
        }
        _ => None,
    }
}

/// Whether a directory `name` is anywhere under `dir` (not following
/// symlinks, at most `depth` levels down).
fn has_dir_named(dir: &Path, name: &str, depth: u32) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        e.file_type().is_ok_and(|t| t.is_dir())
            && (e.file_name() == name || (depth > 0 && has_dir_named(&e.path(), name, depth - 1)))
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let unified = "24 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                       25 24 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
                       26 24 0:24 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(cgroup2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let pure = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        let spaced = "35 24 0:30 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(spaced), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(cgroup2_mount("24 30 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n"), None);
    }

    #[test]
    fn finds_a_unit_directory_at_any_depth() {
        let root = std::env::temp_dir().join(format!("throttlectl-cg-{}", std::process::id()));
        let deep = root.join("user.slice/user-1000.slice/user@1000.service/app.slice/backup.service");
        std::fs::create_dir_all(&deep).unwrap();
        assert!(has_dir_named(&root, "backup.service", 64));
        assert!(has_dir_named(&root, "user.slice", 64));
        assert!(!has_dir_named(&root, "nope.service", 64));
        assert!(!has_dir_named(&root, "backup.service", 2), "deeper than allowed");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn warns_about_an_executable_that_does_not_exist() {
        assert!(absent("exe", "/nonexistent/ct-app").unwrap().contains("/nonexistent/ct-app does not exist"));
        assert_eq!(absent("exe", "/bin/sh"), None);
        assert_eq!(absent("name", "nonexistent"), None);
        assert_eq!(absent("pid", "1"), None);
    }

    #[test]
    fn warns_about_a_unit_with_no_cgroup() {
        let w = absent("unit", "ct-no-such-unit-here.service");
        // Without a cgroup2 mount there is nothing to check against.
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            assert_eq!(
                w.as_deref(),
                Some("no unit ct-no-such-unit-here.service is running; the throttle applies when it starts")
            );
        }
    }
}
