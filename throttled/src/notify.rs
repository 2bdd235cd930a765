//! The systemd notification protocol over `$NOTIFY_SOCKET` (a datagram
//! socket; `@name` is an abstract address): READY, STATUS, WATCHDOG and
//! STOPPING. Without the variable every call is a no-op.
use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let addr = match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(name.as_bytes()).ok()?
                }
                None => SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Notifier { target }
    }

    fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
                tracing::warn!(error = %e, "could not notify the service manager");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// Half the watchdog interval the manager asked for, if it asked us.
    pub fn watchdog_period() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        let for_us = std::env::var("WATCHDOG_PID").ok().is_none_or(|p| p.parse() == Ok(std::process::id()));
        (for_us && usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let path = std::env::temp_dir().join(format!("ct-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        let n =
            Notifier { target: Some((UnixDatagram::unbound().unwrap(), SocketAddr::from_pathname(&path).unwrap())) };
        n.ready("2 throttles on ebpf");
        n.watchdog();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=2 throttles on ebpf");
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        let _ = std::fs::remove_file(&path);
        Notifier { target: None }.ready("nothing happens");
    }
}
