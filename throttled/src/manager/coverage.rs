//! Which throttle limits a process, per direction, when several targets
//! match it, and which cap stacks on it. Pure, so the rule is unit-tested
//! without a kernel.
use super::ThrottleId;
use throttle_common::Direction;

/// One throttle whose target matches the process.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub id: ThrottleId,
    /// `Target::rank` for this process: higher is more specific.
    pub rank: u8,
    /// Bytes/s per direction (`[up, down]`), where it limits that direction.
    pub rates: [Option<u64>; 2],
    /// Admin-set (see `policy`).
    pub admin: bool,
    /// A `user` cap: it never competes, it stacks (see `Assignment::caps`).
    pub cap: bool,
}

/// The winning throttle per direction (`[up, down]`): the most specific
/// target that limits that direction; among equals the older (lower id).
/// A throttle that is not admin-set competes only if it is at least as
/// strict as the admin-set one that would win, so that a user's own pid
/// throttle never loosens an administrator's name, unit or tree limit.
/// Caps stack instead: the process's cap per direction is the oldest
/// matching cap that limits that direction.
pub fn choose(cands: impl IntoIterator<Item = Candidate>) -> Assignment {
    let (caps, cands): (Vec<Candidate>, Vec<Candidate>) = cands.into_iter().partition(|c| c.cap);
    let cap = |i: usize| caps.iter().filter(|c| c.rates[i].is_some()).map(|c| c.id).min();
    let best = |i: usize| {
        let key = |c: &Candidate| (c.rank, std::cmp::Reverse(c.id));
        let limits = |c: &Candidate| c.rates[i].is_some();
        let admin = cands.iter().copied().filter(|c| c.admin && limits(c)).max_by_key(key);
        let cap = admin.and_then(|a| a.rates[i]);
        let eligible = |c: &Candidate| c.admin || c.rates[i].is_some_and(|r| cap.is_none_or(|cap| r <= cap));
        cands.iter().copied().filter(|c| limits(c) && eligible(c)).max_by_key(key).map(|c| c.id)
    };
    Assignment { own: [best(0), best(1)], caps: [cap(0), cap(1)] }
}

/// `[up, down]` throttle ids: the process's own throttle, and its cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    pub own: [Option<ThrottleId>; 2],
    pub caps: [Option<ThrottleId>; 2],
}

impl Assignment {
    pub fn get(&self, d: Direction) -> Option<ThrottleId> {
        self.own[index(d)]
    }

    pub fn cap(&self, d: Direction) -> Option<ThrottleId> {
        self.caps[index(d)]
    }

    /// Whether `id` limits direction `d`, as the throttle or as the cap.
    pub fn limits(&self, id: ThrottleId, d: Direction) -> bool {
        self.get(d) == Some(id) || self.cap(d) == Some(id)
    }

    pub fn is_empty(&self) -> bool {
        self.ids().next().is_none()
    }

    pub fn holds(&self, id: ThrottleId) -> bool {
        self.ids().any(|i| i == id)
    }

    /// Every throttle and cap in it (a throttle once per direction it limits).
    pub fn ids(&self) -> impl Iterator<Item = ThrottleId> + '_ {
        self.own.iter().chain(&self.caps).flatten().copied()
    }
}

fn index(d: Direction) -> usize {
    match d {
        Direction::Up => 0,
        Direction::Down => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: ThrottleId, rank: u8, up: bool, down: bool) -> Candidate {
        Candidate { id, rank, rates: [up.then_some(100), down.then_some(100)], admin: true, cap: false }
    }

    fn own(id: ThrottleId, rank: u8, up: Option<u64>) -> Candidate {
        Candidate { id, rank, rates: [up, None], admin: false, cap: false }
    }

    #[test]
    fn caps_stack_beside_the_winner() {
        let cap = |id, up: bool| Candidate { cap: true, rank: 0, ..c(id, 0, up, true) };
        let a = choose([cap(9, false), c(1, 10, true, true), cap(4, true)]);
        assert_eq!((a.own, a.caps), ([Some(1), Some(1)], [Some(4), Some(4)]));
        assert!(a.limits(4, Direction::Up) && a.limits(1, Direction::Down) && !a.limits(9, Direction::Up));
        let alone = choose([cap(9, true)]);
        assert_eq!((alone.own, alone.caps), ([None, None], [Some(9), Some(9)]));
        assert!(!alone.is_empty() && alone.holds(9));
    }

    #[test]
    fn a_users_throttle_never_loosens_an_admins() {
        // An admin's name throttle (rank 10) at 100; the user's pid throttle (50).
        assert_eq!(choose([c(1, 10, true, true), own(2, 50, Some(1 << 40))]).own, [Some(1), Some(1)], "looser");
        assert_eq!(choose([c(1, 10, true, true), own(2, 50, Some(100))]).own, [Some(2), Some(1)], "as strict");
        assert_eq!(choose([c(1, 10, true, true), own(2, 50, Some(50))]).own, [Some(2), Some(1)], "stricter");
        assert_eq!(choose([c(1, 10, false, true), own(2, 50, Some(1 << 40))]).own, [Some(2), Some(1)], "no admin up");
        assert_eq!(choose([own(3, 10, Some(5)), own(2, 50, Some(1 << 40))]).own, [Some(2), None], "users' own");
    }

    #[test]
    fn most_specific_wins_per_direction() {
        // A name throttle (rank 10) limits both ways, a pid throttle (50) only up.
        let a = choose([c(1, 10, true, true), c(2, 50, true, false)]);
        assert_eq!(a.own, [Some(2), Some(1)]);
        assert!(a.holds(1) && a.holds(2));
    }

    #[test]
    fn older_wins_a_tie() {
        assert_eq!(choose([c(7, 10, true, false), c(3, 10, true, false)]).own, [Some(3), None]);
    }

    #[test]
    fn nothing_matches() {
        assert!(choose(Vec::<Candidate>::new()).is_empty());
        assert!(choose([c(1, 50, false, false)]).is_empty());
    }
}
