//! Control-plane load, shared by the load test and the benchmark: clients on
//! connections of their own making mixed calls (limit, change, remove, list,
//! stats) on processes of their own, so that every error is unexpected.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use throttle_api::{LimitOptions, BUS_NAME, MANAGER_INTERFACE as MGR, MANAGER_PATH};
use zbus::zvariant::OwnedObjectPath;

/// `sleep` processes to limit, killed on drop.
pub struct Sleepers(Vec<Child>);

impl Sleepers {
    pub fn spawn(n: usize) -> Sleepers {
        Sleepers((0..n).map(|_| Command::new("sleep").arg("3600").stdout(Stdio::null()).spawn().unwrap()).collect())
    }

    pub fn pids(&self) -> Vec<u32> {
        self.0.iter().map(Child::id).collect()
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub async fn connect(address: &str) -> zbus::Result<zbus::Connection> {
    zbus::connection::Builder::address(address)?.build().await
}

pub async fn limit(c: &zbus::Connection, pid: u32, down: u64) -> zbus::Result<OwnedObjectPath> {
    let opts = LimitOptions { down: Some(down), ..Default::default() };
    let args = ("pid", pid.to_string(), opts);
    let reply = c.call_method(Some(BUS_NAME), MANAGER_PATH, Some(MGR), "Limit", &args).await?;
    reply.body().deserialize()
}

pub async fn remove(c: &zbus::Connection, path: &OwnedObjectPath) -> zbus::Result<()> {
    c.call_method(Some(BUS_NAME), MANAGER_PATH, Some(MGR), "Remove", &(path,)).await.map(drop)
}

async fn call0(c: &zbus::Connection, iface: &str, method: &str) -> zbus::Result<()> {
    c.call_method(Some(BUS_NAME), MANAGER_PATH, Some(iface), method, &()).await.map(drop)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The mixed calls each client cycles through, in order, and the ping.
pub const CALLS: [&str; 6] = ["Limit", "Limit (change)", "Remove", "ListThrottles", "GetStats", "Peer.Ping"];

/// What a round's clients call.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Limit, change, remove, list and stats, in turn.
    Mixed,
    /// Only `org.freedesktop.DBus.Peer.Ping`, which zbus answers without our
    /// code: the latency floor of the bus, the VM and the clients.
    Ping,
}

/// Calls of every client of one round.
#[derive(Default)]
pub struct Round {
    /// Sorted.
    pub latencies: Vec<Duration>,
    /// Per entry of `CALLS`, sorted.
    pub by_call: [Vec<Duration>; 6],
    pub errors: Vec<String>,
    pub wall: Duration,
    /// Share of CPU time the hypervisor stole meanwhile, in %.
    pub stolen: f64,
}

/// One client: `calls` calls of `mix`. With `pace`, one call starts every
/// `pace` (or right after the previous one if that took longer), from
/// `phase` × `pace` on; without, back to back.
async fn client(address: String, pids: Vec<u32>, calls: usize, mix: Mix, pace: Option<Duration>, phase: f64) -> Round {
    let t0 = Instant::now();
    let c = connect(&address).await.expect("connecting to the bus");
    if let Some(p) = pace {
        tokio::time::sleep(p.mul_f64(phase)).await;
    }
    let mut ticks = pace.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let (mut by_call, mut errors) = (<[Vec<Duration>; 6]>::default(), Vec::new());
    let mut mine: Vec<(u32, OwnedObjectPath)> = Vec::new();
    let mut next = pids.into_iter().cycle();
    for i in 0..calls {
        if let Some(t) = &mut ticks {
            t.tick().await;
        }
        let kind = if mix == Mix::Ping { 5 } else { i % 5 };
        let t = Instant::now();
        let result = match (kind, mine.last().cloned()) {
            (0, _) => {
                let pid = next.next().expect("pids to limit");
                limit(&c, pid, 1 << 20).await.map(|p| mine.push((pid, p)))
            }
            (1, Some((pid, _))) => limit(&c, pid, 2 << 20).await.map(drop),
            (2, Some((_, p))) => remove(&c, &p).await.map(|_| drop(mine.pop())),
            (3, _) => call0(&c, MGR, "ListThrottles").await,
            (4, _) => call0(&c, MGR, "GetStats").await,
            (5, _) => call0(&c, "org.freedesktop.DBus.Peer", "Ping").await,
            _ => Ok(()),
        };
        by_call[kind].push(t.elapsed());
        if let Err(e) = result {
            errors.push(e.to_string());
        }
    }
    let latencies = by_call.concat();
    Round { latencies, by_call, errors, wall: t0.elapsed(), ..Round::default() }
}

/// A client per pid list, all at once; paced clients spread over the
/// period rather than in step, as independent clients would be.
pub async fn round(address: &str, own: &[Vec<u32>], calls: usize, mix: Mix, pace: Option<Duration>) -> Round {
    let (t, ticks) = (Instant::now(), super::cpu_ticks());
    let n = own.len() as f64;
    let spawn =
        |(i, p): (usize, &Vec<u32>)| tokio::spawn(client(address.into(), p.clone(), calls, mix, pace, i as f64 / n));
    let tasks: Vec<_> = own.iter().enumerate().map(spawn).collect();
    let mut all = Round::default();
    for task in tasks {
        let r = task.await.expect("a client panicked");
        all.latencies.extend(r.latencies);
        for (mine, theirs) in all.by_call.iter_mut().zip(r.by_call) {
            mine.extend(theirs);
        }
        all.errors.extend(r.errors);
    }
    all.wall = t.elapsed();
    all.stolen = super::steal_pct(ticks, super::cpu_ticks());
    all.latencies.sort();
    all.by_call.iter_mut().for_each(|v| v.sort());
    all
}
