//! The data the view shows, independent of D-Bus.
use serde::Serialize;

/// What the process list is ordered by (largest first; the daemon sorts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    #[default]
    Total,
    Down,
    Up,
}

impl Sort {
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Total => "total",
            Sort::Down => "down",
            Sort::Up => "up",
        }
    }
    pub fn next(self) -> Sort {
        match self {
            Sort::Total => Sort::Down,
            Sort::Down => Sort::Up,
            Sort::Up => Sort::Total,
        }
    }
}

/// Which traffic counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    #[default]
    All,
    Internet,
    Local,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Internet => "internet",
            Scope::Local => "local",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Scope::All => "All",
            Scope::Internet => "Internet",
            Scope::Local => "Local",
        }
    }
    pub fn next(self) -> Scope {
        match self {
            Scope::All => Scope::Internet,
            Scope::Internet => Scope::Local,
            Scope::Local => Scope::All,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Up,
    Down,
}

impl Dir {
    /// As the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::Up => "up",
            Dir::Down => "down",
        }
    }
    pub fn word(self) -> &'static str {
        match self {
            Dir::Up => "upload",
            Dir::Down => "download",
        }
    }
    pub fn other(self) -> Dir {
        match self {
            Dir::Up => Dir::Down,
            Dir::Down => Dir::Up,
        }
    }
}

/// One row of GetTopProcesses; rates in bytes/s, totals in bytes, limits 0 = none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Proc {
    pub pid: u32,
    /// The owner; null from a daemon that does not say.
    pub uid: Option<u32>,
    pub name: String,
    pub exe: String,
    pub down_rate: u64,
    pub up_rate: u64,
    pub down_total: u64,
    pub up_total: u64,
    pub throttled: bool,
    pub throttle_ids: Vec<u32>,
    pub backends: Vec<String>,
    pub down_limit: u64,
    pub up_limit: u64,
}

impl Proc {
    /// Blocked outright: its throttle's limits are on the `block` backend.
    pub fn blocked(&self) -> bool {
        self.backends.iter().any(|b| b == "block")
    }
}

/// One entry of ListBackends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub directions: Vec<String>,
    pub priority: String,
    pub available: bool,
    pub reason: String,
    pub default_for: Vec<String>,
    pub active: u32,
}

impl Backend {
    pub fn is_default(&self, d: Dir) -> bool {
        self.default_for.iter().any(|x| x == d.as_str())
    }
    /// Why this backend cannot become the default for `d`, if it cannot.
    pub fn why_not(&self, d: Dir) -> Option<String> {
        if !self.directions.iter().any(|x| x == d.as_str()) {
            Some(format!("cannot do {}", d.word()))
        } else if !self.available {
            Some(format!("unavailable: {}", self.reason))
        } else {
            None
        }
    }
}

/// One name's bytes in the usage history (GetUsage).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub name: String,
    pub down: u64,
    pub up: u64,
}

/// One second of GetHistory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub up: u64,
    pub down: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_reasons() {
        let b = Backend { directions: vec!["up".into()], available: true, ..Backend::default() };
        assert_eq!(b.why_not(Dir::Up), None);
        assert_eq!(b.why_not(Dir::Down).as_deref(), Some("cannot do download"));
        let b = Backend { directions: vec!["up".into()], reason: "no ifb".into(), ..Backend::default() };
        assert_eq!(b.why_not(Dir::Up).as_deref(), Some("unavailable: no ifb"));
    }
}
