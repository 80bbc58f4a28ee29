//! The process's memory budget for messages: what every queue of the
//! process (subscriber queues, the dead-letter queue, the publish paths) may
//! hold at once, in bytes.
//!
//! A message is charged once per process, however many queues share it: the
//! first queue that takes it reserves its size, and the charge is given back
//! when the last reference to the message is dropped (the [`Charge`] guard
//! lives inside the shared message). The budget is derived from the memory
//! the process may use (see [`queue_budget`]).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::gauge::Gauge;

/// Share of the process's memory limit that queued messages may hold; the
/// rest is left to the runtime, connection buffers and the allocator.
pub const QUEUE_SHARE_PERCENT: u64 = 50;

/// The memory limit assumed when neither a flag nor a cgroup sets one.
pub const DEFAULT_MEMORY_LIMIT: u64 = 2 << 30;

/// Bytes a queued message holds besides its payload: the message itself,
/// its id and its delivery header lines, and a queue entry.
pub const MESSAGE_OVERHEAD: u64 = 512;

/// The bytes queued messages may hold in this process, shared by every
/// queue. Cheap to share (`Arc<MemoryBudget>`).
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
    used_gauge: Gauge,
}

/// The budget cannot take a message of this size now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("memory budget exhausted: {wanted} bytes wanted, {used} of {limit} in use")]
pub struct OverBudget {
    /// The message's size.
    pub wanted: u64,
    /// Bytes in use.
    pub used: u64,
    /// The budget.
    pub limit: u64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Self::with_gauges(limit, Gauge::default(), Gauge::default())
    }

    /// No bound (tests and tools).
    pub fn unlimited() -> Arc<Self> {
        Self::new(u64::MAX)
    }

    /// A budget of `limit` bytes that reports itself on `limit_gauge` and
    /// its use on `used_gauge`.
    pub fn with_gauges(limit: u64, used_gauge: Gauge, limit_gauge: Gauge) -> Arc<Self> {
        limit_gauge.set(i64::try_from(limit).unwrap_or(i64::MAX));
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
            used_gauge,
        })
    }

    /// The bound in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves `bytes`; the returned guard gives them back when dropped.
    pub fn try_charge(self: &Arc<Self>, bytes: u64) -> Result<Charge, OverBudget> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .map_err(|used| OverBudget {
                wanted: bytes,
                used,
                limit: self.limit,
            })?;
        self.used_gauge.inc_by(i64::try_from(bytes).unwrap_or(i64::MAX));
        Ok(Charge {
            budget: self.clone(),
            bytes,
        })
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.used_gauge.dec_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// Bytes reserved in a [`MemoryBudget`], given back on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Charge {
    /// The budget this charge is held in.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// Where a shared message keeps its charge: empty until a queue first takes
/// it. A copy of the message starts uncharged (it is a message of its own).
#[derive(Debug, Default)]
pub struct ChargeSlot(OnceLock<Charge>);

impl Clone for ChargeSlot {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl ChargeSlot {
    /// Charges `bytes` to `budget` unless already charged.
    pub fn charge(&self, budget: &Arc<MemoryBudget>, bytes: u64) -> Result<(), OverBudget> {
        if self.0.get().is_some() {
            return Ok(());
        }
        // Two queues racing to charge the same message: the loser's charge
        // is dropped, which gives its bytes back.
        let _ = self.0.set(budget.try_charge(bytes)?);
        Ok(())
    }

    /// True once charged.
    pub fn is_charged(&self) -> bool {
        self.0.get().is_some()
    }
}

/// The bytes queued messages may hold: [`QUEUE_SHARE_PERCENT`] of `limit`,
/// else of the cgroup's memory limit, else of [`DEFAULT_MEMORY_LIMIT`].
pub fn queue_budget(limit: Option<u64>) -> u64 {
    let limit = limit
        .or_else(|| cgroup_memory_limit(Path::new("/sys/fs/cgroup")))
        .unwrap_or(DEFAULT_MEMORY_LIMIT);
    (u128::from(limit) * u128::from(QUEUE_SHARE_PERCENT) / 100) as u64
}

/// The memory limit of the cgroup this process runs in, read under `root`
/// (cgroup v2 `memory.max`, else v1 `memory/memory.limit_in_bytes`); `None`
/// when unlimited or unknown.
pub fn cgroup_memory_limit(root: &Path) -> Option<u64> {
    let read = |path: &Path| std::fs::read_to_string(path).ok();
    let text = read(&root.join("memory.max")).or_else(|| read(&root.join("memory/memory.limit_in_bytes")))?;
    let limit: u64 = text.trim().parse().ok()?;
    // v1 reports "no limit" as a huge page-aligned number.
    (limit < 1 << 60).then_some(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_is_given_back_when_dropped() {
        let budget = MemoryBudget::new(100);
        let a = budget.try_charge(60).unwrap();
        assert_eq!(budget.used(), 60);
        let refused = budget.try_charge(50).unwrap_err();
        assert_eq!((refused.used, refused.limit), (60, 100));
        drop(a);
        assert_eq!(budget.used(), 0);
        let _b = budget.try_charge(100).unwrap();
        assert!(budget.try_charge(1).is_err());
    }

    #[test]
    fn the_cgroup_limit_is_read_from_v2_then_v1() {
        let dir = std::env::temp_dir().join(format!("wsbridge-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("memory")).unwrap();
        assert_eq!(cgroup_memory_limit(&dir), None);
        std::fs::write(dir.join("memory/memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        assert_eq!(cgroup_memory_limit(&dir), None, "v1 without a limit");
        std::fs::write(dir.join("memory/memory.limit_in_bytes"), "268435456\n").unwrap();
        assert_eq!(cgroup_memory_limit(&dir), Some(256 << 20));
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_memory_limit(&dir), None, "v2 without a limit");
        std::fs::write(dir.join("memory.max"), "134217728\n").unwrap();
        assert_eq!(cgroup_memory_limit(&dir), Some(128 << 20));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(queue_budget(Some(256 << 20)), 128 << 20);
    }
}
