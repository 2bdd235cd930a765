//! Choosing a default backend for one direction: only backends that are
//! available and can do that direction can be chosen.
use super::model::{Backend, Dir};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub dir: Dir,
    /// Index into the backend list; None when no backend can be chosen.
    pub cursor: Option<usize>,
}

fn selectable(bs: &[Backend], i: usize, dir: Dir) -> bool {
    bs.get(i).is_some_and(|b| b.why_not(dir).is_none())
}

impl Selector {
    /// Starts on the current default, else on the first that can be chosen.
    pub fn new(bs: &[Backend], dir: Dir) -> Selector {
        let default = (0..bs.len()).find(|&i| bs[i].is_default(dir) && selectable(bs, i, dir));
        Selector { dir, cursor: default.or_else(|| (0..bs.len()).find(|&i| selectable(bs, i, dir))) }
    }

    /// Moves to the next backend that can be chosen, skipping the others;
    /// stays put at either end.
    pub fn step(&mut self, bs: &[Backend], delta: isize) {
        let Some(mut i) = self.cursor else { return };
        while let Some(j) = i.checked_add_signed(delta).filter(|&j| j < bs.len()) {
            if selectable(bs, j, self.dir) {
                self.cursor = Some(j);
                return;
            }
            i = j;
        }
    }

    /// After the list changed: back to a valid start if the cursor is not.
    pub fn revalidate(&mut self, bs: &[Backend]) {
        if !self.cursor.is_some_and(|i| selectable(bs, i, self.dir)) {
            *self = Selector::new(bs, self.dir);
        }
    }

    pub fn chosen<'a>(&self, bs: &'a [Backend]) -> Option<&'a Backend> {
        self.cursor.and_then(|i| bs.get(i))
    }
}
