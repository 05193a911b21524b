//! The in-order sequencer, written once: items numbered 0, 1, 2, … arrive in any order (from threads working in
//! parallel) and leave in order.
//!
//! The producer uses it three times: a file's chunks are checksummed in parallel but released in file order
//! (`FileState::arrive`), compressed frames likewise (`arrive_stored`), and files first appear on the streams in
//! scan order (the router's `FirstAppearance`, where one item may account for a range of numbers: a batch of small
//! files). What is parked is bounded by the caller: in the producer every parked chunk holds a pool buffer (an end or a
//! vanished file's place holds none, and at most one per file in flight).

use std::collections::BTreeMap;

/// Items parked until every lower number has left.
#[derive(Debug)]
pub struct Reorder<T> {
    next: u64,
    parked: BTreeMap<u64, T>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder { next: 0, parked: BTreeMap::new() }
    }
}

impl<T> Reorder<T> {
    /// Nothing parked; item 0 is next.
    pub fn new() -> Reorder<T> {
        Reorder::default()
    }

    /// The number of the next item to leave.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Parks item `index` (replacing one parked under the same number).
    pub fn insert(&mut self, index: u64, item: T) {
        self.parked.insert(index, item);
    }

    /// The item parked under `index`, made if there is none yet, to add to (several arrivals under one number).
    pub fn entry(&mut self, index: u64) -> &mut T
    where
        T: Default,
    {
        self.parked.entry(index).or_default()
    }

    /// The next item, if it has arrived: it leaves, and the one after it is next. Its number is
    /// [`Reorder::next`] before the call.
    pub fn pop_ready(&mut self) -> Option<T> {
        let item = self.parked.remove(&self.next)?;
        self.next += 1;
        Some(item)
    }

    /// Makes `next` the next number (an item that accounted for several numbers has left), never going back.
    pub fn advance_to(&mut self, next: u64) {
        self.next = self.next.max(next);
    }

    /// The lowest number parked, if any (an item still waiting for an earlier one).
    pub fn first_parked(&self) -> Option<u64> {
        self.parked.keys().next().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_leave_in_order_whatever_order_they_arrive_in() {
        let mut order = Reorder::new();
        let mut out = Vec::new();
        for index in [2u64, 0, 3, 1, 5, 4] {
            order.insert(index, index * 10);
            while let Some(item) = order.pop_ready() {
                out.push(item);
            }
        }
        assert_eq!(out, [0, 10, 20, 30, 40, 50]);
        assert_eq!(order.next(), 6);
        assert_eq!(order.first_parked(), None);
    }

    #[test]
    fn an_item_may_account_for_a_range_and_entries_gather() {
        let mut order: Reorder<Vec<&str>> = Reorder::new();
        order.entry(3).push("c");
        order.entry(0).push("a");
        order.entry(0).push("b");
        assert_eq!(order.first_parked(), Some(0));
        assert_eq!(order.pop_ready(), Some(vec!["a", "b"]));
        // Item 0 stood for numbers 0..3.
        order.advance_to(3);
        assert_eq!(order.pop_ready(), Some(vec!["c"]));
        order.advance_to(1);
        assert_eq!(order.next(), 4, "never goes back");
    }
}
