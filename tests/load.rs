//! The control plane under concurrent load, against the real daemon on a
//! private bus: 50 clients, each on its own connection, make 200 mixed
//! calls (limit, change, remove, list, stats) on processes of their own
//! while 500 other throttles are active. Every call answers (no deadlock)
//! without an unexpected error; afterwards only the 500 remain, in the API
//! and in the kernel's map and in the saved state; signals are not backed
//! up; and the daemon's memory is flat across rounds. How fast is the benchmark's business
//! (docs/BENCHMARKS.md), not this test's.
mod common;

use std::{collections::BTreeSet, time::Duration};

use common::*;
use futures_util::StreamExt;
use throttle_testkit::{
    bus::PrivateBus,
    load::{connect, limit, round, Mix, Sleepers},
    rss_kib,
};
use throttled::persist::StateStore;

const BASE: usize = 500;
const CLIENTS: usize = 50;
const CALLS: usize = 200;
const ROUNDS: usize = 3;

#[test]
fn fifty_clients_against_500_throttles() {
    let Some(_g) = begin() else { return };
    let Some(bus) = PrivateBus::start("load") else { return };
    let dir = ScratchDir::new("load");
    let mut d = bus.daemon(daemon_bin(), &dir, "ct-none0", &[("RUST_LOG", "warn")]);
    let sleepers = Sleepers::spawn(BASE + CLIENTS * 20 + 1);
    let pids = sleepers.pids();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let c = connect(bus.address()).await.unwrap();
        for &pid in &pids[..BASE] {
            limit(&c, pid, 1 << 20).await.expect("a base throttle");
        }
        let own: Vec<Vec<u32>> = pids[BASE..BASE + CLIENTS * 20].chunks(20).map(<[u32]>::to_vec).collect();
        let mut rss = Vec::new();
        for n in 1..=ROUNDS {
            let r = tokio::time::timeout(Duration::from_secs(300), round(bus.address(), &own, CALLS, Mix::Mixed, None))
                .await
                .unwrap_or_else(|_| panic!("round {n}: calls still unanswered after 300 s"));
            assert_eq!(r.latencies.len(), CLIENTS * CALLS, "round {n}: calls went missing");
            assert!(r.errors.is_empty(), "round {n}: {} unexpected errors, e.g. {}", r.errors.len(), r.errors[0]);
            rss.push(rss_kib(d.pid()));
            eprintln!(
                "round {n}: {} calls in {:.1} s, daemon RSS {} KiB",
                r.latencies.len(),
                r.wall.as_secs_f64(),
                rss[n - 1]
            );
        }
        // A leak of even 1 KiB per throttle made would show as ~2 MiB a round.
        let grew = rss[ROUNDS - 1].saturating_sub(rss[0]);
        assert!(grew < 1536, "daemon RSS grew by {grew} KiB over rounds 2–{ROUNDS}: {rss:?}");
        let listed: Vec<zbus::zvariant::OwnedObjectPath> = c
            .call_method(
                Some("org.chadthrottle"),
                "/org/chadthrottle",
                Some("org.chadthrottle.Manager"),
                "ListThrottles",
                &(),
            )
            .await
            .unwrap()
            .body()
            .deserialize()
            .unwrap();
        assert_eq!(listed.len(), BASE, "clients' throttles left behind, or base ones lost");
        assert_eq!(kernel_procs_entries(), BASE, "the kernel's process map does not match the throttles");
        // What a restart would read (snapshot and journal, written before
        // each answer) holds exactly the throttles listed.
        let saved = StateStore::new(&dir.path.join("state")).load().unwrap().expect("a saved state");
        let saved: BTreeSet<String> =
            saved.throttles.iter().map(|t| format!("/org/chadthrottle/throttles/{}", t.id)).collect();
        let listed_set: BTreeSet<String> = listed.iter().map(|p| p.to_string()).collect();
        assert_eq!(saved, listed_set, "the saved state differs from the daemon's throttles");
        // Not backed up: a new throttle's signal comes at once.
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface("org.chadthrottle.Manager")
            .unwrap()
            .member("ThrottleAdded")
            .unwrap()
            .build();
        let mut added = zbus::MessageStream::for_match_rule(rule, &c, None).await.unwrap();
        let path = limit(&c, pids[BASE + CLIENTS * 20], 1 << 20).await.unwrap();
        let signal = tokio::time::timeout(Duration::from_secs(2), added.next()).await;
        let msg = signal.expect("ThrottleAdded took over 2 s: signals are backed up").unwrap().unwrap();
        let (p,): (zbus::zvariant::OwnedObjectPath,) = msg.body().deserialize().unwrap();
        assert_eq!(p, path);
    });
    assert!(d.alive(), "the daemon died under load");
    d.stop();
    drop(sleepers);
}
