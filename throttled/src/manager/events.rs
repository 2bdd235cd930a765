//! What happened, in order: every event goes through `Events::send` to the
//! live listeners (the D-Bus layer turns them into signals) and into a
//! bounded queue of recent events (`Manager::take_events`): one path, so
//! the two never disagree.
#[cfg(feature = "testing")]
use std::collections::VecDeque;
use throttle_common::Direction;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{ThrottleId, ThrottleInfo};
use crate::backend::Health;

/// Events kept for the tests (`Manager::take_events`).
#[cfg(feature = "testing")]
const MAX_EVENTS: usize = 4096;

/// Why a throttle went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalReason {
    Requested,
    ProcessExited,
    /// Its rule left `rules.d` (or changed target) on reload.
    Reload,
    /// The client holding it (`hold`) left the bus.
    Released,
}

impl RemovalReason {
    /// As the API's `ThrottleRemoved` signal and the logs give it.
    pub fn as_str(self) -> &'static str {
        match self {
            RemovalReason::Requested => "requested",
            RemovalReason::ProcessExited => "process-exited",
            RemovalReason::Reload => "reload",
            RemovalReason::Released => "released",
        }
    }
}

impl std::fmt::Display for RemovalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened, in order, for the API's signals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    ThrottleAdded {
        id: ThrottleId,
    },
    ThrottleChanged {
        id: ThrottleId,
    },
    ThrottleRemoved {
        id: ThrottleId,
        reason: RemovalReason,
    },
    ThrottleMigrated {
        id: ThrottleId,
        direction: Direction,
        from: &'static str,
        to: &'static str,
    },
    DefaultChanged {
        direction: Direction,
        backend: &'static str,
    },
    /// A throttle's quota is used up: its `then` applies until the period resets.
    QuotaExceeded {
        id: ThrottleId,
    },
    /// A throttle's schedule window opened (`active`) or closed.
    ScheduleChanged {
        id: ThrottleId,
        active: bool,
    },
    /// `component` is a backend name, "datapath" for the shared programs,
    /// or "state" for the saved throttles (broken while they cannot be
    /// written: the limits apply, but a restart would lose them).
    HealthChanged {
        component: &'static str,
        health: Health,
    },
}

/// An event for listeners, with the throttle it is about (added, changed
/// or migrated) as it was right after.
#[derive(Clone, Debug)]
pub struct Notice {
    pub event: Event,
    pub info: Option<ThrottleInfo>,
}

/// Listeners, and (for the tests) the recent events.
#[derive(Default)]
pub struct Events {
    subscribers: Vec<UnboundedSender<Notice>>,
    #[cfg(feature = "testing")]
    recent: VecDeque<Event>,
}

impl Events {
    /// Every event from now on, in order.
    pub fn subscribe(&mut self) -> UnboundedReceiver<Notice> {
        let (tx, rx) = unbounded_channel();
        self.subscribers.push(tx);
        rx
    }

    /// Whether anyone listens (only then is a throttle's info worth reading).
    pub fn wants_info(&self) -> bool {
        !self.subscribers.is_empty()
    }

    pub fn send(&mut self, event: Event, info: Option<ThrottleInfo>) {
        if !self.subscribers.is_empty() {
            let notice = Notice { event: event.clone(), info };
            self.subscribers.retain(|s| s.send(notice.clone()).is_ok());
        }
        #[cfg(feature = "testing")]
        {
            if self.recent.len() >= MAX_EVENTS {
                self.recent.pop_front();
            }
            self.recent.push_back(event);
        }
    }

    /// The recent events, oldest first, forgotten once taken.
    #[cfg(feature = "testing")]
    pub fn take(&mut self) -> Vec<Event> {
        self.recent.drain(..).collect()
    }
}
