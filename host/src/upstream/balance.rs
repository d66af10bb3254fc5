//! Load-balancing algorithms behind one small trait, one type each (as in Sōzu).
//!
//! A balancer chooses among the targets the caller declares eligible (available and not
//! already tried by this request); it never sees health or ejection logic itself.

use std::sync::Arc;

use parking_lot::Mutex;
use rand::Rng;

use super::target::Target;

/// What a pick may depend on besides the targets.
#[derive(Default)]
pub struct PickContext<'a> {
    /// Key for consistent hashing (the configured header's value), if present.
    pub hash_key: Option<&'a [u8]>,
}

pub trait Balancer: Send + Sync {
    /// Index of the chosen target among those for which `eligible` is true, or `None` if none is.
    fn pick(
        &self,
        targets: &[Arc<Target>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext<'_>,
    ) -> Option<usize>;
}

/// nginx's smooth weighted round robin: with weights 5,1,1 it yields a a b a c a a, spreading
/// the heavy target's turns instead of bunching them, and a 90/10 split is exact over 100 picks.
pub struct SmoothRoundRobin {
    current: Mutex<Vec<i64>>,
}

impl SmoothRoundRobin {
    pub fn new(len: usize) -> Self {
        SmoothRoundRobin {
            current: Mutex::new(vec![0; len]),
        }
    }
}

impl SmoothRoundRobin {
    /// One smooth weighted round-robin step over `n` items with the given weights; used for
    /// targets and for a route's `split` across upstreams alike.
    pub fn pick_by_weight(
        &self,
        n: usize,
        weight: &dyn Fn(usize) -> u32,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut current = self.current.lock();
        if current.len() != n {
            current.resize(n, 0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..n {
            if !eligible(i) {
                continue;
            }
            let w = i64::from(weight(i));
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    }
}

impl Balancer for SmoothRoundRobin {
    fn pick(
        &self,
        targets: &[Arc<Target>],
        eligible: &dyn Fn(usize) -> bool,
        _: &PickContext<'_>,
    ) -> Option<usize> {
        self.pick_by_weight(targets.len(), &|i| targets[i].weight(), eligible)
    }
}

/// Weighted random choice.
pub struct WeightedRandom;

impl Balancer for WeightedRandom {
    fn pick(
        &self,
        targets: &[Arc<Target>],
        eligible: &dyn Fn(usize) -> bool,
        _: &PickContext<'_>,
    ) -> Option<usize> {
        weighted_random(targets, eligible)
    }
}

fn weighted_random(targets: &[Arc<Target>], eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
    let total: u64 = (0..targets.len())
        .filter(|&i| eligible(i))
        .map(|i| u64::from(targets[i].weight()))
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = rand::rng().random_range(0..total);
    for (i, target) in targets.iter().enumerate() {
        if !eligible(i) {
            continue;
        }
        let weight = u64::from(target.weight());
        if point < weight {
            return Some(i);
        }
        point -= weight;
    }
    None
}

/// Least request by the power of two choices: pick two targets at random (by weight) and take
/// the one with fewer requests in flight relative to its weight. Cheap, lock-free and avoids the
/// herd behaviour of a global least-loaded choice.
pub struct LeastRequest;

impl Balancer for LeastRequest {
    fn pick(
        &self,
        targets: &[Arc<Target>],
        eligible: &dyn Fn(usize) -> bool,
        _: &PickContext<'_>,
    ) -> Option<usize> {
        let first = weighted_random(targets, eligible)?;
        let Some(second) = weighted_random(targets, &|i| i != first && eligible(i)) else {
            return Some(first);
        };
        // Fewer requests in flight per unit of weight wins; ties keep the (weighted) first pick,
        // so idle targets still share traffic by weight.
        let in_flight = |i: usize| targets[i].in_flight() as u64;
        let weight = |i: usize| u64::from(targets[i].weight());
        let second_is_less_loaded =
            in_flight(second) * weight(first) < in_flight(first) * weight(second);
        Some(if second_is_less_loaded { second } else { first })
    }
}

/// Consistent hashing on a request header (a ring with virtual nodes in proportion to weight):
/// the same key keeps reaching the same target while the target set is stable, and only the keys
/// of a removed or unavailable target move. Requests without the header are spread at random.
pub struct ConsistentHash {
    /// (point, target index), sorted by point.
    ring: Vec<(u64, usize)>,
}

/// Virtual nodes per unit of weight, and a cap on the ring size.
const VNODES_PER_WEIGHT: u64 = 40;
const MAX_RING: u64 = 40_000;

impl ConsistentHash {
    pub fn new(targets: &[Arc<Target>]) -> Self {
        let total_weight: u64 = targets
            .iter()
            .map(|t| u64::from(t.weight()))
            .sum::<u64>()
            .max(1);
        let per_weight = (MAX_RING / total_weight).clamp(1, VNODES_PER_WEIGHT);
        let mut ring = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            for vnode in 0..u64::from(target.weight()) * per_weight {
                let point = fnv1a(format!("{}-{vnode}", target.addr).as_bytes());
                ring.push((point, i));
            }
        }
        ring.sort_unstable();
        ConsistentHash { ring }
    }
}

impl Balancer for ConsistentHash {
    fn pick(
        &self,
        targets: &[Arc<Target>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext<'_>,
    ) -> Option<usize> {
        let Some(key) = ctx.hash_key else {
            return weighted_random(targets, eligible);
        };
        if self.ring.is_empty() {
            return None;
        }
        let point = fnv1a(key);
        let start = self.ring.partition_point(|&(p, _)| p < point);
        (0..self.ring.len())
            .map(|offset| self.ring[(start + offset) % self.ring.len()].1)
            .find(|&i| i < targets.len() && eligible(i))
    }
}

/// FNV-1a with a final avalanche (so short, similar keys spread over the ring).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finaliser
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(weights: &[u32]) -> Vec<Arc<Target>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(Target::new(&format!("127.0.0.1:{}", 9000 + i), w).unwrap()))
            .collect()
    }

    fn counts(
        balancer: &dyn Balancer,
        targets: &[Arc<Target>],
        n: usize,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Vec<usize> {
        let mut counts = vec![0; targets.len()];
        for _ in 0..n {
            counts[balancer
                .pick(targets, eligible, &PickContext::default())
                .unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn smooth_round_robin_is_exact_and_spread() {
        let t = targets(&[5, 1, 1]);
        let rr = SmoothRoundRobin::new(t.len());
        let order: Vec<usize> = (0..7)
            .map(|_| rr.pick(&t, &|_| true, &PickContext::default()).unwrap())
            .collect();
        assert_eq!(order, vec![0, 0, 1, 0, 2, 0, 0]);
        let t = targets(&[90, 10]);
        let rr = SmoothRoundRobin::new(t.len());
        assert_eq!(counts(&rr, &t, 1000, &|_| true), vec![900, 100]);
    }

    #[test]
    fn ineligible_targets_are_skipped() {
        let t = targets(&[1, 1, 1]);
        for balancer in [
            Box::new(SmoothRoundRobin::new(3)) as Box<dyn Balancer>,
            Box::new(WeightedRandom),
            Box::new(LeastRequest),
            Box::new(ConsistentHash::new(&t)),
        ] {
            let c = counts(balancer.as_ref(), &t, 300, &|i| i != 1);
            assert_eq!(c[1], 0);
            assert!(
                balancer
                    .pick(&t, &|_| false, &PickContext::default())
                    .is_none()
            );
        }
    }

    #[test]
    fn least_request_prefers_idle_targets() {
        let t = targets(&[1, 1]);
        let _busy: Vec<_> = (0..10).map(|_| t[0].start_request()).collect();
        let c = counts(&LeastRequest, &t, 100, &|_| true);
        assert_eq!(c[0], 0, "{c:?}");
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_little() {
        let t = targets(&[1, 1, 1, 1]);
        let ring = ConsistentHash::new(&t);
        let pick = |key: &str, eligible: &dyn Fn(usize) -> bool| {
            ring.pick(
                &t,
                eligible,
                &PickContext {
                    hash_key: Some(key.as_bytes()),
                },
            )
            .unwrap()
        };
        let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let before: Vec<usize> = keys.iter().map(|k| pick(k, &|_| true)).collect();
        assert_eq!(
            before,
            keys.iter().map(|k| pick(k, &|_| true)).collect::<Vec<_>>()
        );
        let after: Vec<usize> = keys.iter().map(|k| pick(k, &|i| i != 2)).collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != 2 {
                assert_eq!(b, a, "keys of other targets must not move");
            }
        }
        let on_each = (0..4).map(|i| before.iter().filter(|&&b| b == i).count());
        for n in on_each {
            assert!((150..=350).contains(&n), "uneven ring: {n}");
        }
    }
}
