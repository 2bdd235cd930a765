//! Wall-clock time as the usage history counts it: unix seconds, and the
//! local offset that says where days begin.

/// Unix time in seconds (0 before 1970).
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Seconds east of UTC here, now.
pub fn local_utc_offset() -> i64 {
    let t = now() as libc::time_t;
    // SAFETY: localtime_r only writes the tm it is given.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff
    }
}
