//! `--memory-limit`, divided once into named parts.
//!
//! Each command works out at start-up what its memory goes to (chunk buffers, packs in flight, the ended files a
//! writer remembers, a manifest held for checking) and records each part here under its name, so the arithmetic
//! lives in one place per command, the parts can be logged (`-v`) and a part is passed on by name rather than as
//! "the memory limit" with a meaning that depends on who reads it.

use std::fmt;

use crate::size::human;

/// The memory limit and the parts given out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBudget {
    limit: u64,
    parts: Vec<(&'static str, u64)>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes with nothing given out yet.
    pub fn new(limit: u64) -> MemoryBudget {
        MemoryBudget { limit, parts: Vec::new() }
    }

    /// The whole limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Gives `bytes` to the part `name` (added to what it has) and returns `bytes`.
    pub fn assign(&mut self, name: &'static str, bytes: u64) -> u64 {
        match self.parts.iter_mut().find(|(part, _)| *part == name) {
            Some((_, held)) => *held += bytes,
            None => self.parts.push((name, bytes)),
        }
        bytes
    }

    /// Gives `count` buffers of `size` bytes to the part `name`; returns `count`.
    pub fn buffers(&mut self, name: &'static str, count: usize, size: u64) -> usize {
        self.assign(name, count as u64 * size);
        count
    }

    /// What the part `name` holds (0 if it has nothing).
    pub fn part(&self, name: &str) -> u64 {
        self.parts.iter().find(|(part, _)| *part == name).map_or(0, |(_, bytes)| *bytes)
    }

    /// Everything given out so far.
    pub fn assigned(&self) -> u64 {
        self.parts.iter().map(|(_, bytes)| bytes).sum()
    }
}

/// `256 MiB: chunk buffers 48 MiB, ended files 32 MiB`, for the log.
impl fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--memory-limit {}:", human(self.limit))?;
        for (index, (name, bytes)) in self.parts.iter().enumerate() {
            let separator = if index == 0 { " " } else { ", " };
            write!(f, "{separator}{name} {}", human(*bytes))?;
        }
        if self.parts.is_empty() {
            write!(f, " nothing given out")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_named_summed_and_shown() {
        let mut budget = MemoryBudget::new(256 << 20);
        assert_eq!(budget.buffers("chunk buffers", 24, 2 << 20), 24);
        assert_eq!(budget.assign("ended files", 32 << 20), 32 << 20);
        budget.assign("ended files", 1 << 20);
        assert_eq!(budget.part("chunk buffers"), 48 << 20);
        assert_eq!(budget.part("ended files"), 33 << 20);
        assert_eq!(budget.part("packs"), 0);
        assert_eq!(budget.assigned(), 81 << 20);
        assert_eq!(budget.limit(), 256 << 20);
        let shown = budget.to_string();
        assert!(shown.starts_with("--memory-limit 256"), "{shown}");
        assert!(shown.contains("chunk buffers 48") && shown.contains(", ended files 33"), "{shown}");
    }
}
