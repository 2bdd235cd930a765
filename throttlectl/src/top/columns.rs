//! The process list's columns, and which of them fit a width.
use ratatui::{layout::Constraint, text::Line, widgets::Cell};

use super::{
    human,
    model::{Proc, Sort},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Col {
    Mark,
    Pid,
    Name,
    Down,
    Up,
    TotalDown,
    TotalUp,
    Backends,
}

use Col::*;

/// Left to right.
const ORDER: [Col; 8] = [Mark, Pid, Name, Down, Up, TotalDown, TotalUp, Backends];
/// The selection marker takes this much on the left.
pub const MARKER: u16 = 2;

impl Col {
    /// Width, or the least width for the name (which takes what is left).
    fn width(self) -> u16 {
        match self {
            Mark => 2,
            Pid => 7,
            Name => 10,
            Down | Up => 11,
            TotalDown | TotalUp => 10,
            Backends => 12,
        }
    }

    pub fn constraint(self) -> Constraint {
        match self {
            Name => Constraint::Fill(1),
            c => Constraint::Length(c.width()),
        }
    }

    pub fn title(self, sort: Sort) -> Cell<'static> {
        let sorted = |on: bool, t: &str| right(if on { format!("{t}▼") } else { t.to_string() });
        match self {
            Mark => Cell::from(""),
            Pid => right("PID".into()),
            Name => Cell::from("NAME"),
            Down => sorted(sort != Sort::Up, "DOWN"),
            Up => sorted(sort != Sort::Down, "UP"),
            TotalDown => right("TOTAL↓".into()),
            TotalUp => right("TOTAL↑".into()),
            Backends => Cell::from("BACKENDS"),
        }
    }

    pub fn cell(self, p: &Proc) -> Cell<'static> {
        match self {
            Mark => Cell::from(match (p.blocked(), p.throttled) {
                (true, _) => "⛔",
                (false, true) => "⚡",
                (false, false) => "",
            }),
            Pid => right(p.pid.to_string()),
            Name => Cell::from(p.name.clone()),
            Down => right(human::rate(p.down_rate)),
            Up => right(human::rate(p.up_rate)),
            TotalDown => right(human::bytes(p.down_total)),
            TotalUp => right(human::bytes(p.up_total)),
            Backends => Cell::from(if p.blocked() { "BLOCKED".into() } else { p.backends.join(",") }),
        }
    }
}

fn right(s: String) -> Cell<'static> {
    Cell::from(Line::from(s).right_aligned())
}

/// The columns that fit `width`, most useful first: the marker, pid and
/// name always; then the sorted rate, the other rate, backends, totals.
pub fn fitting(width: u16, sort: Sort) -> Vec<Col> {
    let rates = if sort == Sort::Up { [Up, Down] } else { [Down, Up] };
    let wanted = [Mark, Pid, Name, rates[0], rates[1], Backends, TotalDown, TotalUp];
    let mut used = MARKER;
    let mut keep = Vec::new();
    for (i, c) in wanted.into_iter().enumerate() {
        let need = c.width() + 1;
        if i >= 3 && used.saturating_add(need) > width {
            break;
        }
        used = used.saturating_add(need);
        keep.push(c);
    }
    ORDER.into_iter().filter(|c| keep.contains(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_screens_drop_the_least_useful_columns() {
        assert_eq!(fitting(0, Sort::Total), [Mark, Pid, Name]);
        assert_eq!(fitting(50, Sort::Down), [Mark, Pid, Name, Down, Up]);
        assert_eq!(fitting(40, Sort::Up), [Mark, Pid, Name, Up]);
        assert_eq!(fitting(63, Sort::Total), [Mark, Pid, Name, Down, Up, Backends]);
        assert_eq!(fitting(200, Sort::Total), ORDER);
    }
}
