//! Bounds the questions the daemon has in flight at polkitd, per user.
//! The bus lets one connection wait for only so many replies (dbus-daemon's
//! `max_replies_per_connection`), and polkitd answers one at a time: a
//! user who opens hundreds of connections must not use them all up and
//! make polkit fail for everyone else. So each uid gets a few questions in
//! flight and a short queue; past that its calls are told `Busy` at once,
//! and other users never wait behind them.
use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::errors::Error;

/// Questions one uid may have at polkitd at once.
pub const PER_UID_IN_FLIGHT: usize = 4;
/// Calls of one uid in flight or queued; the next is Busy.
pub const PER_UID_ADMITTED: usize = 32;
/// Questions in flight for everyone together: well under dbus-daemon's
/// pending-reply limit (128 by default on the system bus).
pub const IN_FLIGHT: usize = 64;
/// The longest a call waits for its turn before it is Busy.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

struct Slot {
    own: Arc<Semaphore>,
    admitted: usize,
}

static SLOTS: LazyLock<Mutex<HashMap<u32, Slot>>> = LazyLock::new(Mutex::default);
static ALL: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(IN_FLIGHT)));

fn slots() -> std::sync::MutexGuard<'static, HashMap<u32, Slot>> {
    SLOTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A uid's place in its queue; the slot goes with its last holder.
struct Admission(u32);

impl Drop for Admission {
    fn drop(&mut self) {
        let mut s = slots();
        if let Some(slot) = s.get_mut(&self.0) {
            slot.admitted -= 1;
            if slot.admitted == 0 {
                s.remove(&self.0);
            }
        }
    }
}

/// Leave to ask polkit one question; dropping it lets the next in.
pub struct Pass {
    _all: OwnedSemaphorePermit,
    _own: OwnedSemaphorePermit,
    _admission: Admission,
}

fn busy(uid: u32) -> Error {
    Error::Busy(format!("too many authorization checks in progress for uid {uid}; try again shortly"))
}

/// Waits for `uid`'s turn; Busy if its queue is full or the turn does not
/// come within [`MAX_WAIT`].
pub async fn enter(uid: u32) -> Result<Pass, Error> {
    let (admission, own) = {
        let mut s = slots();
        let slot =
            s.entry(uid).or_insert_with(|| Slot { own: Arc::new(Semaphore::new(PER_UID_IN_FLIGHT)), admitted: 0 });
        if slot.admitted >= PER_UID_ADMITTED {
            return Err(busy(uid));
        }
        slot.admitted += 1;
        (Admission(uid), slot.own.clone())
    };
    let turn = async {
        let own = own.acquire_owned().await.map_err(|_| busy(uid))?;
        let all = ALL.clone().acquire_owned().await.map_err(|_| busy(uid))?;
        Ok(Pass { _all: all, _own: own, _admission: admission })
    };
    tokio::time::timeout(MAX_WAIT, turn).await.map_err(|_| busy(uid))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_uid_cannot_take_every_turn() {
        let flood: u32 = 4_000_001;
        let mut held = Vec::new();
        for _ in 0..PER_UID_IN_FLIGHT {
            held.push(enter(flood).await.unwrap());
        }
        // Its next calls queue, up to the bound; the one after is Busy.
        let queued: Vec<_> = (PER_UID_IN_FLIGHT..PER_UID_ADMITTED).map(|_| tokio::spawn(enter(flood))).collect();
        tokio::task::yield_now().await;
        while slots().get(&flood).map_or(0, |s| s.admitted) < PER_UID_ADMITTED {
            tokio::task::yield_now().await;
        }
        assert!(matches!(enter(flood).await, Err(Error::Busy(_))));
        // Another user goes straight through.
        let other = tokio::time::timeout(Duration::from_millis(100), enter(4_000_002)).await;
        assert!(matches!(other, Ok(Ok(_))), "another uid waited behind the flood");
        drop(other);
        drop(held);
        for q in queued {
            drop(q.await.unwrap().unwrap());
        }
        assert!(!slots().contains_key(&flood), "the slot outlived its last call");
    }
}
