//! Which throttle limits a process, per direction, when several targets
//! match it. Pure, so the rule is unit-tested without a kernel.
use super::ThrottleId;
use crate::backend::Direction;

/// One throttle whose target matches the process.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub id: ThrottleId,
    /// `Target::rank` for this process: higher is more specific.
    pub rank: u8,
    pub up: bool,
    pub down: bool,
}

/// The winning throttle per direction (`[up, down]`): the most specific
/// target that limits that direction; among equals the older (lower id).
pub fn choose(cands: impl IntoIterator<Item = Candidate> + Clone) -> Assignment {
    let best = |has: fn(&Candidate) -> bool| {
        cands.clone().into_iter().filter(has).max_by_key(|c| (c.rank, std::cmp::Reverse(c.id))).map(|c| c.id)
    };
    Assignment([best(|c| c.up), best(|c| c.down)])
}

/// `[up, down]` throttle ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Assignment(pub [Option<ThrottleId>; 2]);

impl Assignment {
    pub fn get(&self, d: Direction) -> Option<ThrottleId> {
        self.0[index(d)]
    }

    pub fn is_empty(&self) -> bool {
        self.0 == [None, None]
    }

    pub fn holds(&self, id: ThrottleId) -> bool {
        self.0.contains(&Some(id))
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
        Candidate { id, rank, up, down }
    }

    #[test]
    fn most_specific_wins_per_direction() {
        // A name throttle (rank 10) limits both ways, a pid throttle (50) only up.
        let a = choose([c(1, 10, true, true), c(2, 50, true, false)]);
        assert_eq!(a.0, [Some(2), Some(1)]);
        assert!(a.holds(1) && a.holds(2));
    }

    #[test]
    fn older_wins_a_tie() {
        assert_eq!(choose([c(7, 10, true, false), c(3, 10, true, false)]).0, [Some(3), None]);
    }

    #[test]
    fn nothing_matches() {
        assert!(choose(Vec::<Candidate>::new()).is_empty());
        assert!(choose([c(1, 50, false, false)]).is_empty());
    }
}
