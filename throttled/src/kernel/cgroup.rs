//! Finds the cgroup v2 mount (unified at /sys/fs/cgroup, or hybrid at
//! /sys/fs/cgroup/unified) from mountinfo rather than assuming a path.
use std::{fs, io, path::PathBuf};

pub use throttle_common::mountinfo::{cgroup2_mount as parse_mountinfo, mounts};

pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    parse_mountinfo(&text).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 filesystem is mounted"))
}
