//! `busctl monitor` as an independent client: the signals the daemon
//! sends every client, as they arrive.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use throttle_testkit::lab::wait_until;

/// One signal as `busctl monitor` printed it.
#[derive(Clone, Debug)]
pub struct Signal {
    pub member: String,
    pub args: Vec<String>,
    pub at: Instant,
}

/// `busctl monitor` on the bus, restarted when the bus restarts, so an
/// independent client records what the daemon tells every client.
pub struct Monitor {
    seen: Arc<Mutex<Vec<Signal>>>,
    child: Arc<Mutex<Option<Child>>>,
    stop: Arc<AtomicBool>,
}

const MATCHES: [&str; 2] = [
    "type='signal',interface='org.chadthrottle.Manager'",
    "type='signal',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='org.chadthrottle'",
];

impl Monitor {
    pub fn watch(address: &str) -> Monitor {
        Monitor::watch_also(address, &[])
    }

    /// As `watch`, with more match rules (e.g. the throttles' PropertiesChanged).
    pub fn watch_also(address: &str, more: &[&str]) -> Monitor {
        let more: Vec<String> = more.iter().map(|m| format!("--match={m}")).collect();
        let m = Monitor { seen: Arc::default(), child: Arc::default(), stop: Arc::default() };
        let (seen, child, stop, address) = (m.seen.clone(), m.child.clone(), m.stop.clone(), address.to_string());
        let more = more.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Line-buffered: busctl writes to a pipe in blocks otherwise.
                let mut cmd = Command::new("stdbuf");
                cmd.args(["-oL", "busctl", &format!("--address={address}"), "monitor", "--json=short"]);
                cmd.args(MATCHES.map(|m| format!("--match={m}"))).args(&more);
                let Ok(mut c) = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() else { break };
                let (out, err) = (c.stdout.take().unwrap(), c.stderr.take().unwrap());
                *child.lock().unwrap() = Some(c);
                let tx = ready_tx.clone();
                // It says "Monitoring bus message stream." once subscribed.
                std::thread::spawn(move || {
                    if BufReader::new(err).lines().next().is_some() {
                        let _ = tx.send(());
                    }
                });
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(s) = parse_signal(&line) {
                        seen.lock().unwrap().push(s);
                    }
                }
                std::thread::sleep(Duration::from_millis(50)); // the bus is restarting
            }
        });
        assert!(ready_rx.recv_timeout(Duration::from_secs(5)).is_ok(), "busctl monitor did not start");
        m
    }

    pub fn since(&self, t: Instant) -> Vec<Signal> {
        self.seen.lock().unwrap().iter().filter(|s| s.at >= t).cloned().collect()
    }

    /// Waits until a signal matching `f` arrived after `t`.
    pub fn wait_for(&self, t: Instant, within: Duration, f: impl Fn(&Signal) -> bool) -> bool {
        wait_until(within, || self.since(t).iter().any(&f))
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn parse_signal(line: &str) -> Option<Signal> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let data = v["payload"]["data"].as_array()?;
    let args = data.iter().map(|a| a.as_str().map_or_else(|| a.to_string(), String::from)).collect();
    Some(Signal { member: v["member"].as_str()?.to_string(), args, at: Instant::now() })
}
