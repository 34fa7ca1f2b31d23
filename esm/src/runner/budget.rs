//! The process-wide memory budget for records held by shards (`max_buffered_mb`).
//!
//! Each shard bounds its own memory (its state machine pauses reading at two events'
//! worth of records per lane), but a thousand backlogged shards would multiply that
//! bound. So every shard of every mapping draws from one budget: before each read a
//! shard reserves the most a page can take ([`MAX_PAGE_MEMORY`]), then keeps exactly
//! what its records take and gives the rest back, and gives memory back as its records
//! are done. A shard that cannot reserve waits to read (the records it holds are still
//! invoked, so the budget always frees up); shards wait in turn, first come first
//! served.
//!
//! [`MAX_PAGE_MEMORY`]: crate::core::shard::MAX_PAGE_MEMORY

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget is counted in KiB, so that a `u32` of permits covers 4 TiB.
const UNIT: usize = 1024;

/// The memory budget shared by every shard of the process.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    units: u32,
}

/// Memory a shard holds from the budget; given back when dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl MemoryBudget {
    /// A budget of `bytes` (at least one page's worth).
    pub fn new(bytes: usize) -> Self {
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            semaphore: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// Waits until `bytes` (capped at the whole budget) can be reserved.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let units = units_for(bytes).min(self.units);
        match self.semaphore.clone().acquire_many_owned(units).await {
            Ok(permit) => Reservation {
                permit: Some(permit),
            },
            // The semaphore is never closed; without it there is nothing to bound.
            Err(_) => Reservation::default(),
        }
    }

    /// The bytes not reserved by anyone now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits() * UNIT
    }

    /// Makes `held` cover exactly `bytes`: gives back what is above, and takes what is
    /// missing if it is available now (a page larger than its reservation is already
    /// in memory, so it is never waited for).
    pub fn resize(&self, held: &mut Reservation, bytes: usize) {
        let want = units_for(bytes);
        let have = held.units();
        if have > want {
            if let Some(permit) = held.permit.as_mut() {
                drop(permit.split((have - want) as usize));
            }
        } else if have < want {
            if let Ok(more) = self.semaphore.clone().try_acquire_many_owned(want - have) {
                held.merge(Reservation { permit: Some(more) });
            }
        }
    }
}

impl Reservation {
    /// The units held.
    fn units(&self) -> u32 {
        self.permit
            .as_ref()
            .map_or(0, |p| u32::try_from(p.num_permits()).unwrap_or(u32::MAX))
    }

    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.units() as usize * UNIT
    }

    /// Adds `other` to this reservation.
    pub fn merge(&mut self, other: Reservation) {
        match (self.permit.as_mut(), other.permit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, theirs) => self.permit = theirs,
            (Some(_), None) => {}
        }
    }
}

fn units_for(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reservation_shrinks_to_what_is_held_and_gives_the_rest_back() {
        let budget = MemoryBudget::new(10 * UNIT);
        let mut held = budget.reserve(8 * UNIT).await;
        assert_eq!(budget.available(), 2 * UNIT);
        budget.resize(&mut held, 3 * UNIT + 1);
        assert_eq!(held.bytes(), 4 * UNIT);
        assert_eq!(budget.available(), 6 * UNIT);
        budget.resize(&mut held, 0);
        assert_eq!(budget.available(), 10 * UNIT);
    }

    #[tokio::test]
    async fn growing_takes_only_what_is_free_and_never_waits() {
        let budget = MemoryBudget::new(4 * UNIT);
        let _other = budget.reserve(3 * UNIT).await;
        let mut held = Reservation::default();
        budget.resize(&mut held, 2 * UNIT);
        assert_eq!(held.bytes(), 0, "only 1 unit is free: nothing taken");
        budget.resize(&mut held, UNIT);
        assert_eq!(held.bytes(), UNIT);
    }

    #[tokio::test]
    async fn a_reader_waits_until_memory_is_given_back() {
        let budget = MemoryBudget::new(4 * UNIT);
        let first = budget.reserve(4 * UNIT).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(2 * UNIT).await.bytes() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        assert_eq!(waiting.await.unwrap(), 2 * UNIT);
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_capped() {
        let budget = MemoryBudget::new(4 * UNIT);
        assert_eq!(budget.reserve(100 * UNIT).await.bytes(), 4 * UNIT);
    }
}
