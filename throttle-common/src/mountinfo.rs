//! /proc/self/mountinfo: every mount point with its filesystem type, and
//! where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on
//! hybrid systems). Shared by the daemon and throttlectl.
use std::path::PathBuf;

/// The mount point of the first `cgroup2` entry.
pub fn cgroup2_mount(text: &str) -> Option<PathBuf> {
    mounts(text).find_map(|(point, fstype)| (fstype == "cgroup2").then_some(point))
}

/// Every mount in mountinfo text: its mount point and filesystem type.
pub fn mounts(text: &str) -> impl Iterator<Item = (PathBuf, &str)> {
    text.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split_whitespace().nth(4)?;
        Some((PathBuf::from(unescape(point)), right.split_whitespace().next()?))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push(d.iter().fold(0u8, |a, c| a.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid() {
        let t = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                 40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                 41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(t), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn unified_with_optional_fields_and_escapes() {
        let t = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(t), Some(PathBuf::from("/sys/fs/cgroup")));
        let t = "29 23 0:26 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(t), Some(PathBuf::from("/mnt/my cg")));
    }

    #[test]
    fn every_mount_with_its_type() {
        let t = "1 0 0:1 / / rw - ext4 /dev/vda rw\n99 1 0:50 / /tmp/a\\040b rw shared:9 - tmpfs ct-fault rw\n";
        let all: Vec<_> = mounts(t).collect();
        assert_eq!(all, [(PathBuf::from("/"), "ext4"), (PathBuf::from("/tmp/a b"), "tmpfs")]);
    }

    #[test]
    fn none() {
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }
}
