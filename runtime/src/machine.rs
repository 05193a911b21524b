//! What the machine offers, for defaults that fit it: thread counts that follow the cores this process may use,
//! and a `--memory-limit` that grows with them. On 2 cores every default is what it was (the values measured best
//! there are the floors).

/// The environment variable that, when set to a positive number, stands for the machine's cores: for an operator
/// whose container reports more cores than it may use, and for the tests of these defaults.
pub const CORES_VARIABLE: &str = "XBKIT_CORES";

/// The cores this process may use (`std::thread::available_parallelism`, which honours CPU affinity and cgroup
/// quotas, unless [`CORES_VARIABLE`] says otherwise); 1 when the system cannot say.
pub fn cores() -> usize {
    let set = std::env::var(CORES_VARIABLE).ok().and_then(|n| n.parse::<usize>().ok()).filter(|&n| n > 0);
    set.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A thread count's default: one thread a core, and never fewer than `floor` (the default measured on 2 cores).
pub fn threads(floor: usize) -> usize {
    cores().max(floor)
}

/// `--memory-limit`'s default, as the option spells it: 256M, or `per_core_mb` MiB a core where that is more. The
/// producer asks 16 (at a thread a core, a 2 MiB chunk per thread in each stage, twice MEB's rule, stays inside
/// it); the consumer 32 (its buffers are `--max-chunk-size`, 16M, and each decompress thread keeps one).
pub fn memory_limit(per_core_mb: usize) -> String {
    format!("{}M", (per_core_mb * cores()).max(256))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_cores_and_never_go_below_their_floors() {
        let cores = cores();
        assert!(cores >= 1);
        assert_eq!(threads(4), cores.max(4));
        assert_eq!(threads(1), cores);
        let limit: u64 = memory_limit(16).trim_end_matches('M').parse().unwrap();
        assert!(limit >= 256 && limit >= 16 * cores as u64);
    }
}
