//! Settlement: how a message's delivery ended, told to whoever handed it in
//! and is waiting to acknowledge it (a broker consumer acks its queue only
//! then). Messages without a settle handle (every in-memory channel) pay
//! nothing but an empty field.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// How a message's delivery to its subscriber ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The subscriber answered 2xx.
    Delivered,
    /// The subscriber's dead-letter sink took it.
    DeadLettered,
    /// Given up and counted as dropped, for this reason.
    Dropped(&'static str),
}

/// Tells one waiter how a message ended, once; clones share it. Dropped
/// without a settlement (the engine stopped or the task was aborted), the
/// waiter sees its receiver closed: the message was not settled.
#[derive(Clone, Default)]
pub struct Settle(Arc<Mutex<Option<oneshot::Sender<Settlement>>>>);

impl Settle {
    /// A handle and the receiver its settlement arrives on.
    pub fn new() -> (Self, oneshot::Receiver<Settlement>) {
        let (tx, rx) = oneshot::channel();
        (Self(Arc::new(Mutex::new(Some(tx)))), rx)
    }

    /// Sends `outcome` if nothing was sent yet.
    pub fn settle(&self, outcome: Settlement) {
        let tx = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(outcome);
        }
    }
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Settle")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_settlement_wins() {
        let (settle, mut rx) = Settle::new();
        settle.clone().settle(Settlement::Delivered);
        settle.settle(Settlement::Dropped("late"));
        assert_eq!(rx.try_recv(), Ok(Settlement::Delivered));
    }

    #[test]
    fn dropped_unsettled_closes_the_receiver() {
        let (settle, mut rx) = Settle::new();
        drop(settle);
        assert_eq!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed));
    }
}
