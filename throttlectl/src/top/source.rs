//! Where the TUI's data comes from: a trait, and the daemon over D-Bus.
use std::time::{Duration, Instant};

use throttle_api::{BackendStatus, LimitOptions, TopProcess};

use super::model::{Backend, Dir, Proc, Sample, Scope, Sort, Usage};
use crate::api::{Client, Failure, ThrottleView};

/// What the TUI asks of the daemon. Errors with code 5 mean it is gone.
#[allow(async_fn_in_trait)]
pub trait Source {
    async fn top(&mut self, count: u32, sort: Sort, scope: Scope) -> Result<Vec<Proc>, Failure>;
    async fn history(&mut self, pid: u32) -> Result<Vec<Sample>, Failure>;
    /// Bytes by process name over the last 24 hours, most first.
    async fn usage(&mut self) -> Result<Vec<Usage>, Failure>;
    async fn backends(&mut self) -> Result<Vec<Backend>, Failure>;
    async fn throttles(&mut self) -> Result<Vec<ThrottleView>, Failure>;
    async fn limit(&mut self, pid: u32, down: Option<u64>, up: Option<u64>) -> Result<(), Failure> {
        self.limit_with(pid, LimitOptions { down, up, ..Default::default() }).await
    }
    /// A pid throttle with any options (a block, a priority).
    async fn limit_with(&mut self, pid: u32, opts: LimitOptions) -> Result<(), Failure>;
    async fn remove(&mut self, t: &ThrottleView) -> Result<(), Failure>;
    async fn set_default(&mut self, dir: Dir, backend: &str) -> Result<(), Failure>;
}

/// How long between connection attempts once the daemon is gone.
const RETRY: Duration = Duration::from_secs(2);
/// Reads must be quick; changes may wait for a polkit agent.
const READ: Duration = Duration::from_secs(5);
const WRITE: Duration = Duration::from_secs(120);

/// The daemon on a bus. A lost connection is dropped and a new one made,
/// at most every `RETRY`.
pub struct Dbus {
    bus: String,
    /// Every method call's limit on the connection (`--timeout`).
    timeout: Duration,
    client: Option<Client>,
    last_try: Option<Instant>,
    last_error: String,
}

impl Dbus {
    pub fn new(bus: &str, timeout: Duration) -> Dbus {
        Dbus { bus: bus.into(), timeout, client: None, last_try: None, last_error: String::new() }
    }

    async fn client(&mut self) -> Result<&Client, Failure> {
        if self.client.is_none() {
            if self.last_try.is_some_and(|t| t.elapsed() < RETRY) {
                return Err(Failure::unreachable(self.last_error.clone()));
            }
            self.last_try = Some(Instant::now());
            match Client::connect(&self.bus, self.timeout).await {
                Ok(c) => self.client = Some(c),
                Err(f) => return Err(self.lose(f)),
            }
        }
        self.client.as_ref().ok_or_else(|| Failure::unreachable("not connected"))
    }

    fn lose(&mut self, f: Failure) -> Failure {
        self.client = None;
        self.last_error = f.to_string();
        f
    }

    async fn call<T>(
        &mut self,
        wait: Duration,
        f: impl AsyncFnOnce(&Client) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        // The connection's own method timeout may be shorter.
        let wait = wait.min(self.timeout);
        let c = self.client().await?;
        let r = tokio::time::timeout(wait, f(c)).await.unwrap_or_else(|_| {
            Err(Failure::unreachable(format!("chadthrottled did not answer within {} s", wait.as_secs())))
        });
        match r {
            Err(f) if f.code() == 5 => Err(self.lose(f)),
            r => r,
        }
    }
}

/// Errors after which the connection is not worth keeping (a timeout too:
/// `Failure::from` makes it code 5, which `call` drops).
fn fail(e: zbus::Error) -> Failure {
    let lost = match &e {
        zbus::Error::InputOutput(io) if io.kind() == std::io::ErrorKind::TimedOut => false,
        zbus::Error::InputOutput(_) | zbus::Error::Connection(..) | zbus::Error::Handshake(_) => true,
        zbus::Error::MethodError(name, ..) => matches!(
            name.as_str(),
            "org.freedesktop.DBus.Error.NoReply"
                | "org.freedesktop.DBus.Error.Disconnected"
                | "org.freedesktop.DBus.Error.Timeout"
                | "org.freedesktop.DBus.Error.TimedOut"
        ),
        _ => false,
    };
    if lost {
        Failure::unreachable(format!("lost chadthrottled: {e}"))
    } else {
        Failure::from(e)
    }
}

impl Source for Dbus {
    async fn top(&mut self, count: u32, sort: Sort, scope: Scope) -> Result<Vec<Proc>, Failure> {
        let (sort, scope) = (sort.as_str(), scope.as_str());
        let dicts =
            self.call(READ, async |c| c.manager.get_top_processes(count, sort, scope).await.map_err(fail)).await?;
        Ok(dicts.iter().map(proc_of).collect())
    }

    async fn history(&mut self, pid: u32) -> Result<Vec<Sample>, Failure> {
        let h = self.call(READ, async |c| c.manager.get_history("process", pid).await.map_err(fail)).await?;
        Ok(h.into_iter().map(|(up, down)| Sample { up, down }).collect())
    }

    async fn usage(&mut self) -> Result<Vec<Usage>, Failure> {
        let since = crate::usage::now() - 86400;
        let rows = self.call(READ, async |c| c.manager.get_usage("name", since, 0).await.map_err(fail)).await?;
        let sum = |a: Option<u64>, b: Option<u64>| a.unwrap_or(0).saturating_add(b.unwrap_or(0));
        Ok(rows
            .into_iter()
            .map(|r| Usage {
                down: sum(r.down_internet, r.down_local),
                up: sum(r.up_internet, r.up_local),
                name: r.key.unwrap_or_default(),
            })
            .collect())
    }

    async fn backends(&mut self) -> Result<Vec<Backend>, Failure> {
        let dicts = self.call(READ, async |c| c.manager.list_backends().await.map_err(fail)).await?;
        Ok(dicts.iter().map(backend_of).collect())
    }

    async fn throttles(&mut self) -> Result<Vec<ThrottleView>, Failure> {
        self.call(READ, async |c| c.throttles().await).await
    }

    async fn limit_with(&mut self, pid: u32, opts: LimitOptions) -> Result<(), Failure> {
        let pid = pid.to_string();
        self.call(WRITE, async |c| c.manager.limit("pid", &pid, &opts).await.map(drop).map_err(fail)).await
    }

    async fn remove(&mut self, t: &ThrottleView) -> Result<(), Failure> {
        self.call(WRITE, async |c| c.manager.remove(&t.path.as_ref()).await.map_err(fail)).await
    }

    async fn set_default(&mut self, dir: Dir, backend: &str) -> Result<(), Failure> {
        self.call(WRITE, async |c| c.manager.set_default_backend(dir.as_str(), backend).await.map_err(fail)).await
    }
}

/// Missing or mistyped keys read as empty: an older daemon still shows.
pub fn proc_of(d: &TopProcess) -> Proc {
    let d = d.clone();
    Proc {
        pid: d.pid.unwrap_or(0),
        uid: d.uid,
        name: d.name.unwrap_or_default(),
        exe: d.exe.unwrap_or_default(),
        down_rate: d.down_rate.unwrap_or(0),
        up_rate: d.up_rate.unwrap_or(0),
        down_total: d.down_total.unwrap_or(0),
        up_total: d.up_total.unwrap_or(0),
        throttled: d.throttled.unwrap_or(false),
        throttle_ids: d.throttle_ids.unwrap_or_default(),
        backends: d.backends.unwrap_or_default(),
        down_limit: d.down_limit.unwrap_or(0),
        up_limit: d.up_limit.unwrap_or(0),
    }
}

pub fn backend_of(d: &BackendStatus) -> Backend {
    let d = d.clone();
    Backend {
        name: d.name.unwrap_or_default(),
        directions: d.directions.unwrap_or_default(),
        priority: d.priority.unwrap_or_default(),
        available: d.available.unwrap_or(false),
        reason: d.reason.unwrap_or_default(),
        default_for: d.default_for.unwrap_or_default(),
        active: d.active.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use zbus::zvariant::{serialized::Context, to_bytes, Type, Value, LE};

    use super::*;

    /// `pairs` as the daemon would send them, read as the proxy reads them.
    fn dict<T: for<'d> serde::Deserialize<'d> + Type>(pairs: Vec<(&str, Value<'_>)>) -> T {
        let map: HashMap<&str, Value<'_>> = pairs.into_iter().collect();
        to_bytes(Context::new_dbus(LE, 0), &map).unwrap().deserialize().unwrap().0
    }

    #[test]
    fn reads_a_process_dict() {
        let d = dict(vec![
            ("pid", Value::U32(42)),
            ("uid", Value::U32(1000)),
            ("name", Value::from("curl")),
            ("down_rate", Value::U64(1024)),
            ("throttled", Value::Bool(true)),
            ("throttle_ids", Value::from(vec![3u32])),
            ("backends", Value::from(vec!["ebpf"])),
            ("up_limit", Value::U64(2048)),
            ("exe", Value::U32(7)),
        ]);
        let p = proc_of(&d);
        assert_eq!((p.pid, p.uid, p.name.as_str(), p.down_rate, p.up_rate), (42, Some(1000), "curl", 1024, 0));
        assert!(p.throttled);
        assert_eq!((p.throttle_ids, p.backends, p.up_limit), (vec![3], vec!["ebpf".to_string()], 2048));
        assert_eq!(p.exe, "", "a mistyped key reads as empty");
    }

    #[test]
    fn reads_a_backend_dict() {
        let d = dict(vec![
            ("name", Value::from("tc_htb")),
            ("directions", Value::from(vec!["up"])),
            ("available", Value::Bool(false)),
            ("reason", Value::from("no sch_htb")),
            ("default_for", Value::from(Vec::<String>::new())),
            ("active", Value::U32(2)),
        ]);
        let b = backend_of(&d);
        assert_eq!(b.why_not(Dir::Up).as_deref(), Some("unavailable: no sch_htb"));
        assert_eq!(b.active, 2);
    }

    #[tokio::test]
    async fn an_unreachable_bus_is_retried_no_more_than_every_two_seconds() {
        let mut s = Dbus::new("unix:path=/nonexistent/bus", Duration::from_secs(25));
        let first = s.top(1, Sort::Total, Scope::All).await.unwrap_err();
        assert_eq!(first.code(), 5);
        let t = s.last_try;
        let again = s.top(1, Sort::Total, Scope::All).await.unwrap_err();
        assert_eq!((again.code(), again.to_string()), (5, first.to_string()));
        assert_eq!(s.last_try, t, "no new attempt within 2 s");
    }
}
