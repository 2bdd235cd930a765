//! The backend pool: every backend, the default per direction for new
//! throttles, and resolution of a requested backend name. Backends start
//! lazily (on their first throttle) and release their kernel objects when
//! their last throttle goes.
use std::cell::Cell;

use throttle_common::{text::quote, Direction};

use super::ManagerError;
use crate::{
    backend::{
        ebpf::EbpfBackend, ifb_tc::IfbTcBackend, interfaces::InterfacePolicy, mark::MarkBackend, tc_htb::TcHtbBackend,
        Availability, Backend, BackendError, Health,
    },
    config::{Config, Defaults},
    limit::MARKS,
};

pub struct Pool {
    pub backends: Vec<Box<dyn Backend>>,
    /// The configured (or runtime-chosen) preference per direction.
    pub preference: Defaults,
    /// Last health seen per backend, to report changes once.
    pub health: Vec<Health>,
    /// Per direction: the fallback from an unusable preference was logged.
    warned: Cell<[bool; 2]>,
}

impl Pool {
    pub fn new(config: &Config) -> Self {
        let policy = InterfacePolicy { names: config.interfaces.clone() };
        let backends: Vec<Box<dyn Backend>> = vec![
            Box::new(EbpfBackend::new()),
            Box::new(TcHtbBackend::new(policy.clone(), config.state_dir.clone())),
            Box::new(IfbTcBackend::new(policy, config.state_dir.clone())),
            Box::new(MarkBackend::block()),
            Box::new(MarkBackend::count()),
        ];
        Self::with_backends(backends, config.defaults.clone())
    }

    pub fn with_backends(backends: Vec<Box<dyn Backend>>, preference: Defaults) -> Self {
        let health = vec![Health::Idle; backends.len()];
        Pool { backends, preference, health, warned: Cell::new([false; 2]) }
    }

    pub fn name(&self, i: usize) -> &'static str {
        self.backends[i].name()
    }

    /// A backend by the name a user gives: never `block` or `count`, which
    /// only the manager picks (see `resolve`).
    pub fn index(&self, name: &str) -> Result<usize, ManagerError> {
        self.backends.iter().position(|b| b.automatic() && b.name() == name).ok_or_else(|| {
            ManagerError::UnknownBackend(throttle_common::text::escape(name, throttle_common::text::QUOTE_MAX))
        })
    }

    /// Refuses a backend that cannot take a new throttle in `dir`, with why.
    pub fn usable(&self, i: usize, dir: Direction) -> Result<(), ManagerError> {
        let b = &self.backends[i];
        if !b.supports(dir) {
            return Err(BackendError::WrongDirection { name: b.name(), direction: dir }.into());
        }
        match b.availability() {
            Availability::Available => Ok(()),
            Availability::Unavailable(reason) => Err(BackendError::Unavailable { name: b.name(), reason }.into()),
        }
    }

    /// The named backend if usable, or the default for `dir`.
    pub fn resolve(&self, name: Option<&str>, dir: Direction) -> Result<usize, ManagerError> {
        if let Some(mark) = name.filter(|n| MARKS.contains(n)) {
            let i = self.backends.iter().position(|b| b.name() == mark);
            return i.ok_or(ManagerError::NoBackend(dir));
        }
        match name {
            Some(n) => {
                let i = self.index(n)?;
                self.usable(i, dir)?;
                Ok(i)
            }
            None => self.default_index(dir),
        }
    }

    /// The preference if usable, else the best by priority (logged once).
    pub fn default_index(&self, dir: Direction) -> Result<usize, ManagerError> {
        let pref = preference(&self.preference, dir);
        if let Some(name) = pref {
            match self.index(name).and_then(|i| self.usable(i, dir).map(|_| i)) {
                Ok(i) => return Ok(i),
                Err(e) => self.warn_once(dir, &e),
            }
        }
        self.best(dir, None).ok_or(ManagerError::NoBackend(dir))
    }

    fn warn_once(&self, dir: Direction, why: &ManagerError) {
        let mut w = self.warned.get();
        let k = usize::from(dir == Direction::Down);
        if !w[k] {
            tracing::warn!(direction = %dir, error = %why, "default backend unusable; falling back by priority");
            w[k] = true;
            self.warned.set(w);
        }
    }

    /// The backends users choose from: `block` and `count` are not.
    pub fn listed(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.backends.len()).filter(|&i| self.backends[i].automatic())
    }

    /// Refuses moving limits away from `block` or `count`.
    pub fn movable(&self, i: usize) -> Result<(), ManagerError> {
        match self.backends[i].automatic() {
            true => Ok(()),
            false => Err(ManagerError::InvalidArgument(format!(
                "{} holds no rates: nothing moves to or from it",
                self.name(i)
            ))),
        }
    }

    /// The highest-priority usable backend for `dir`, other than `except`.
    pub fn best(&self, dir: Direction, except: Option<usize>) -> Option<usize> {
        (0..self.backends.len())
            .filter(|&i| Some(i) != except && self.backends[i].automatic() && self.usable(i, dir).is_ok())
            .max_by_key(|&i| (self.backends[i].priority(), std::cmp::Reverse(i)))
    }

    /// Saved default backends, with any unknown one set aside.
    pub fn known_defaults(&self, d: Defaults) -> Defaults {
        let known = |name: Option<String>, dir: &str| match name {
            Some(n) if self.index(&n).is_err() => {
                tracing::warn!(direction = dir, backend = %quote(&n), "saved default backend set aside: unknown");
                None
            }
            other => other,
        };
        Defaults { up: known(d.up, "up"), down: known(d.down, "down") }
    }

    pub fn set_preferences(&mut self, d: Defaults) {
        self.preference = d;
        self.warned.set([false; 2]);
    }
}

pub fn preference(d: &Defaults, dir: Direction) -> Option<&str> {
    match dir {
        Direction::Up => d.up.as_deref(),
        Direction::Down => d.down.as_deref(),
    }
}

#[cfg(test)]
mod tests {
    use throttle_common::{rate::Rate, Counters};

    use super::*;
    use crate::backend::{Capabilities, Context, Priority, SlotId};

    /// A backend that only answers questions about itself.
    struct Fake {
        name: &'static str,
        priority: Priority,
        dirs: Vec<Direction>,
        available: bool,
    }

    impl Backend for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn priority(&self) -> Priority {
            self.priority
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities { directions: self.dirs.clone(), ..Default::default() }
        }
        fn availability(&self) -> Availability {
            match self.available {
                true => Availability::Available,
                false => Availability::Unavailable("no HTB in this kernel".into()),
            }
        }
        fn init(&mut self, _: &mut Context<'_>) -> Result<(), BackendError> {
            Ok(())
        }
        fn is_initialized(&self) -> bool {
            false
        }
        fn apply(&mut self, _: &mut Context<'_>, _: SlotId, _: Direction, _: Rate) -> Result<(), BackendError> {
            Ok(())
        }
        fn change(&mut self, _: &mut Context<'_>, _: SlotId, _: Direction, _: Rate) -> Result<(), BackendError> {
            Ok(())
        }
        fn remove(&mut self, _: &mut Context<'_>, _: SlotId, _: Direction) -> Result<(), BackendError> {
            Ok(())
        }
        fn stats(&self, _: &Context<'_>, _: SlotId, _: Direction) -> Result<Counters, BackendError> {
            Ok(Counters::default())
        }
        fn active(&self) -> usize {
            0
        }
        fn health(&self, _: &Context<'_>) -> Health {
            Health::Idle
        }
        fn repair(&mut self, _: &mut Context<'_>) -> Result<(), BackendError> {
            Ok(())
        }
        fn cleanup(&mut self, _: &mut Context<'_>) -> Result<(), BackendError> {
            Ok(())
        }
    }

    fn pool(up_pref: Option<&str>, htb_available: bool) -> Pool {
        let f = |name, priority, dirs: &[Direction], available| -> Box<dyn Backend> {
            Box::new(Fake { name, priority, dirs: dirs.to_vec(), available })
        };
        let backends = vec![
            f("ebpf", Priority::Better, &Direction::BOTH, true),
            f("tc_htb", Priority::Good, &[Direction::Up], htb_available),
            f("ifb_tc", Priority::Good, &[Direction::Down], htb_available),
        ];
        Pool::with_backends(backends, Defaults { up: up_pref.map(String::from), down: None })
    }

    #[test]
    fn default_is_the_preference_when_usable() {
        let p = pool(Some("tc_htb"), true);
        assert_eq!(p.name(p.default_index(Direction::Up).unwrap()), "tc_htb");
        assert_eq!(p.name(p.default_index(Direction::Down).unwrap()), "ebpf");
    }

    #[test]
    fn unusable_preference_falls_back_by_priority() {
        let p = pool(Some("tc_htb"), false);
        assert_eq!(p.name(p.default_index(Direction::Up).unwrap()), "ebpf");
        let p = pool(Some("ifb_tc"), true); // wrong direction
        assert_eq!(p.name(p.default_index(Direction::Up).unwrap()), "ebpf");
        let p = pool(Some("nope"), true);
        assert_eq!(p.name(p.default_index(Direction::Up).unwrap()), "ebpf");
    }

    #[test]
    fn explicit_choices_are_refused_with_the_reason() {
        let p = pool(None, false);
        let e = p.resolve(Some("tc_htb"), Direction::Up).unwrap_err().to_string();
        assert!(e.contains("unavailable") && e.contains("no HTB"), "{e}");
        let e = p.resolve(Some("tc_htb"), Direction::Down).unwrap_err().to_string();
        assert!(e.contains("does not support download"), "{e}");
        assert!(matches!(p.resolve(Some("x"), Direction::Up), Err(ManagerError::UnknownBackend(_))));
    }

    #[test]
    fn block_is_chosen_by_block_only() {
        let mut p = pool(None, false);
        p.backends.push(Box::new(crate::backend::mark::MarkBackend::block()));
        assert!(matches!(p.index("block"), Err(ManagerError::UnknownBackend(_))), "named");
        assert_eq!(p.name(p.resolve(Some(crate::limit::BLOCK_BACKEND), Direction::Up).unwrap()), "block");
        assert_eq!(p.best(Direction::Down, Some(0)), None, "a failover target");
        assert!(p.movable(3).is_err() && p.movable(0).is_ok());
    }

    #[test]
    fn failover_target_skips_the_broken_backend() {
        let p = pool(None, true);
        assert_eq!(p.best(Direction::Up, Some(0)).map(|i| p.name(i)), Some("tc_htb"));
        assert_eq!(p.best(Direction::Up, None).map(|i| p.name(i)), Some("ebpf"));
        let p = pool(None, false);
        assert_eq!(p.best(Direction::Down, Some(0)), None);
    }
}
