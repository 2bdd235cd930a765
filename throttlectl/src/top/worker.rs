//! Carries out the app's effects against a `Source`, one at a time, so a
//! slow daemon never freezes the screen.
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::{
    human,
    source::Source,
    state::{Effect, Reply, COUNT},
};
use throttle_api::LimitOptions;

use crate::api::{Failure, ThrottleView};

pub async fn serve<S: Source>(mut src: S, mut rx: UnboundedReceiver<Effect>, tx: UnboundedSender<Reply>) {
    while let Some(e) = rx.recv().await {
        if tx.send(handle(&mut src, e).await).is_err() {
            break;
        }
    }
}

pub async fn handle<S: Source>(src: &mut S, e: Effect) -> Reply {
    match e {
        Effect::Refresh { sort, scope } => Reply::Top { sort, scope, result: src.top(COUNT, sort, scope).await },
        Effect::History(pid) => Reply::History(pid, src.history(pid).await),
        Effect::Usage => Reply::Usage(src.usage().await),
        Effect::Backends => Reply::Backends(src.backends().await),
        Effect::Limit { pid, name, down, up } => Reply::Done(src.limit(pid, down, up).await.map(|()| {
            let (d, u) = (human::limit(down.unwrap_or(0)), human::limit(up.unwrap_or(0)));
            format!("pid {pid} ({name}) limited: down {d} up {u}")
        })),
        Effect::Remove(pid) => Reply::Done(remove(src, pid).await),
        Effect::Block(pid) => Reply::Done(
            src.limit_with(pid, LimitOptions { block: Some(true), ..Default::default() })
                .await
                .map(|()| format!("pid {pid} blocked (r lifts it)")),
        ),
        Effect::Priority(pid) => Reply::Done(priority(src, pid).await),
        Effect::SetDefault { dir, backend } => Reply::Done(
            src.set_default(dir, &backend)
                .await
                .map(|()| format!("New throttles will use '{backend}' for {}", dir.word())),
        ),
    }
}

/// Removes the pid throttle of `pid`; one that covers more (a name, a
/// unit...) is only named, since removing it would free other processes.
async fn remove<S: Source>(src: &mut S, pid: u32) -> Result<String, Failure> {
    let all = src.throttles().await?;
    let (own, others) = covering(&all, pid);
    if let Some(t) = own {
        src.remove(t).await?;
        return Ok(format!("removed throttle {} (pid {pid})", t.id));
    }
    if others.is_empty() {
        return Err(Failure::not_found(format!("pid {pid} is not throttled")));
    }
    let names: Vec<String> = others.iter().map(|t| format!("{} throttle {} ({})", t.kind, t.id, t.target)).collect();
    Err(Failure::usage(format!(
        "pid {pid} is covered by {}, not removed: that would free other processes too",
        names.join(", ")
    )))
}

/// Moves `pid`'s own throttle to the next priority (normal → high →
/// critical → low → normal), making a pid throttle with no rate if it has none.
async fn priority<S: Source>(src: &mut S, pid: u32) -> Result<String, Failure> {
    let all = src.throttles().await?;
    let now = covering(&all, pid).0.map_or("normal", |t| t.priority.as_str());
    let next = match now {
        "normal" => "high",
        "high" => "critical",
        "critical" => "low",
        _ => "normal",
    };
    src.limit_with(pid, LimitOptions { priority: Some(next.into()), ..Default::default() }).await?;
    Ok(format!("pid {pid}: priority {next}"))
}

/// The pid throttle of `pid`, and every other throttle that covers it.
fn covering(all: &[ThrottleView], pid: u32) -> (Option<&ThrottleView>, Vec<&ThrottleView>) {
    let target = pid.to_string();
    let own = all.iter().find(|t| t.kind == "pid" && t.target == target);
    let others = all.iter().filter(|t| !(t.kind == "pid" && t.target == target) && t.pids.contains(&pid)).collect();
    (own, others)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::model::{Backend, Dir, Proc, Sample, Scope, Sort, Usage};

    #[derive(Default)]
    struct Fake {
        throttles: Vec<ThrottleView>,
        removed: Vec<u32>,
        calls: Vec<String>,
    }

    impl Source for Fake {
        async fn top(&mut self, count: u32, sort: Sort, scope: Scope) -> Result<Vec<Proc>, Failure> {
            self.calls.push(format!("top {count} {} {}", sort.as_str(), scope.as_str()));
            Err(Failure::unreachable("gone"))
        }
        async fn history(&mut self, _: u32) -> Result<Vec<Sample>, Failure> {
            Ok(vec![Sample { up: 1, down: 2 }])
        }
        async fn usage(&mut self) -> Result<Vec<Usage>, Failure> {
            Ok(vec![Usage { name: "a".into(), down: 3, up: 4 }])
        }
        async fn backends(&mut self) -> Result<Vec<Backend>, Failure> {
            Ok(Vec::new())
        }
        async fn throttles(&mut self) -> Result<Vec<ThrottleView>, Failure> {
            Ok(self.throttles.clone())
        }
        async fn limit_with(&mut self, pid: u32, o: LimitOptions) -> Result<(), Failure> {
            let what = match (o.block, &o.priority) {
                (Some(true), _) => "block".to_string(),
                (_, Some(p)) => format!("priority {p}"),
                _ => format!("{:?} {:?}", o.down, o.up),
            };
            self.calls.push(format!("limit {pid} {what}"));
            Ok(())
        }
        async fn remove(&mut self, t: &ThrottleView) -> Result<(), Failure> {
            self.removed.push(t.id);
            Ok(())
        }
        async fn set_default(&mut self, dir: Dir, backend: &str) -> Result<(), Failure> {
            self.calls.push(format!("default {} {backend}", dir.as_str()));
            Ok(())
        }
    }

    fn throttle(id: u32, kind: &str, target: &str, pids: &[u32]) -> ThrottleView {
        ThrottleView {
            path: zbus::zvariant::OwnedObjectPath::try_from(throttle_api::throttle_path(id)).unwrap(),
            id,
            kind: kind.into(),
            target: target.into(),
            blocked: false,
            down: 1024,
            up: 0,
            down_backend: "ebpf".into(),
            up_backend: String::new(),
            pids: pids.to_vec(),
            origin: "runtime".into(),
            status: "active".into(),
            status_detail: String::new(),
            plan: Default::default(),
            priority: "normal".into(),
            caps: Vec::new(),
        }
    }

    fn done(r: Reply) -> Result<String, String> {
        match r {
            Reply::Done(r) => r.map_err(|f| f.to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn r_removes_only_the_pid_throttle() {
        let mut f = Fake {
            throttles: vec![throttle(1, "name", "curl", &[42, 43]), throttle(2, "pid", "42", &[42])],
            ..Fake::default()
        };
        assert_eq!(done(handle(&mut f, Effect::Remove(42)).await), Ok("removed throttle 2 (pid 42)".into()));
        assert_eq!(f.removed, [2]);
    }

    #[tokio::test]
    async fn r_names_a_name_throttle_instead_of_removing_it() {
        let mut f = Fake { throttles: vec![throttle(1, "name", "curl", &[42, 43])], ..Fake::default() };
        let e = done(handle(&mut f, Effect::Remove(42)).await).unwrap_err();
        assert_eq!(e, "pid 42 is covered by name throttle 1 (curl), not removed: that would free other processes too");
        assert!(f.removed.is_empty());
        let e = done(handle(&mut f, Effect::Remove(7)).await).unwrap_err();
        assert_eq!(e, "pid 7 is not throttled");
    }

    #[tokio::test]
    async fn changes_say_what_they_did() {
        let mut f = Fake::default();
        let limit = Effect::Limit { pid: 42, name: "curl".into(), down: Some(1 << 20), up: None };
        assert_eq!(done(handle(&mut f, limit).await), Ok("pid 42 (curl) limited: down 1M up -".into()));
        let set = Effect::SetDefault { dir: Dir::Up, backend: "tc_htb".into() };
        assert_eq!(done(handle(&mut f, set).await), Ok("New throttles will use 'tc_htb' for upload".into()));
        assert_eq!(f.calls, ["limit 42 Some(1048576) None", "default up tc_htb"]);
    }

    #[tokio::test]
    async fn x_blocks_and_p_cycles_the_priority() {
        let mut f = Fake::default();
        assert_eq!(done(handle(&mut f, Effect::Block(42)).await), Ok("pid 42 blocked (r lifts it)".into()));
        assert_eq!(done(handle(&mut f, Effect::Priority(42)).await), Ok("pid 42: priority high".into()));
        f.throttles = vec![throttle(2, "pid", "42", &[42])];
        f.throttles[0].priority = "critical".into();
        assert_eq!(done(handle(&mut f, Effect::Priority(42)).await), Ok("pid 42: priority low".into()));
        assert_eq!(f.calls, ["limit 42 block", "limit 42 priority high", "limit 42 priority low"]);
    }

    #[tokio::test]
    async fn refresh_asks_for_the_sort_and_scope() {
        let mut f = Fake::default();
        let r = handle(&mut f, Effect::Refresh { sort: Sort::Up, scope: Scope::Internet }).await;
        assert!(matches!(r, Reply::Top { sort: Sort::Up, scope: Scope::Internet, result: Err(_) }));
        assert_eq!(f.calls, [format!("top {COUNT} up internet")]);
    }
}
