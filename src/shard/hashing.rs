//! Key placement by rendezvous (highest-random-weight) hashing over shard ids.
//!
//! Every node computes a key's shard from the key and the list of shard ids alone. When a shard
//! is added, only the keys whose new highest score is the new shard move (about 1/(N+1) of
//! them); when one is removed, only its own keys move. xxh3 is stable across processes,
//! platforms and versions, unlike std's randomly seeded hasher.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::ShardId;

fn score(key: &str, shard: ShardId) -> u64 {
    // Spread small shard ids over the seed space so that their scores are independent.
    let seed = u64::from(shard).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x6b76_735f_7368_6172;
    xxh3_64_with_seed(key.as_bytes(), seed)
}

/// The shard among `shards` that owns `key`, or `None` when there is no shard.
pub fn shard_for_key(key: &str, shards: impl IntoIterator<Item = ShardId>) -> Option<ShardId> {
    shards
        .into_iter()
        .max_by_key(|&shard| (score(key, shard), shard))
}

/// A stable hash of a key, for spreading work (such as which replica sends a key) evenly.
pub fn key_hash(key: &str) -> u64 {
    xxh3_64_with_seed(key.as_bytes(), 0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    pub fn random_keys_pub(seed: u64, count: usize) -> Vec<String> {
        random_keys(seed, count)
    }

    fn random_keys(seed: u64, count: usize) -> Vec<String> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                let len = rng.gen_range(1..=50);
                (0..len).map(|_| rng.gen_range('!'..='~')).collect()
            })
            .collect()
    }

    fn counts(keys: &[String], shards: u32) -> Vec<usize> {
        let mut counts = vec![0; shards as usize];
        for key in keys {
            counts[shard_for_key(key, 0..shards).unwrap() as usize] += 1;
        }
        counts
    }

    /// A fixed sample of 10,000 keys. For random key sets, shard sizes follow a binomial
    /// spread (σ ≈ 2.6% of the share at 8 shards), so no key-local hash keeps every set within
    /// ±5%; `failure_rate_of_five_percent_over_seeds` measures how often it is exceeded, which
    /// matches an ideal random placement.
    #[test]
    fn ten_thousand_keys_spread_within_five_percent_for_two_to_eight_shards() {
        let keys = random_keys(1, 10_000);
        for shards in 2..=8u32 {
            let even = keys.len() as f64 / f64::from(shards);
            for (shard, &count) in counts(&keys, shards).iter().enumerate() {
                let off = (count as f64 - even).abs() / even;
                assert!(
                    off <= 0.05,
                    "{shards} shards: shard {shard} holds {count}, even {even}"
                );
            }
        }
    }

    #[test]
    fn sequential_keys_spread_too() {
        // The course scripts write key0..key599.
        let keys: Vec<String> = (0..600).map(|i| format!("key{i}")).collect();
        for shards in 2..=4u32 {
            let even = 600.0 / f64::from(shards);
            for &count in &counts(&keys, shards) {
                assert!(
                    (count as f64 - even).abs() / even <= 0.15,
                    "{shards}: {count}"
                );
            }
        }
    }

    #[test]
    fn placement_is_stable() {
        // Pinned so that a change of hash function, which would strand keys, fails loudly.
        let placed: Vec<_> = ["a", "key0", "key599", "ключ"]
            .iter()
            .map(|k| shard_for_key(k, 0..4).unwrap())
            .collect();
        assert_eq!(placed, [2, 1, 2, 2]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Growing from N to N+1 shards moves keys only onto the new shard, and about 1/(N+1).
        #[test]
        fn growing_moves_only_keys_to_the_new_shard(seed in any::<u64>(), shards in 1u32..8) {
            let keys = random_keys(seed, 4_000);
            let mut moved = 0;
            for key in &keys {
                let before = shard_for_key(key, 0..shards).unwrap();
                let after = shard_for_key(key, 0..shards + 1).unwrap();
                if before != after {
                    prop_assert_eq!(after, shards);
                    moved += 1;
                }
            }
            let expected = keys.len() as f64 / f64::from(shards + 1);
            let sigma = (expected * (1.0 - 1.0 / f64::from(shards + 1))).sqrt();
            prop_assert!((moved as f64 - expected).abs() <= 6.0 * sigma, "moved {} expected {}", moved, expected);
        }

        /// Removing the last shard moves only that shard's keys.
        #[test]
        fn shrinking_moves_only_the_removed_shards_keys(seed in any::<u64>(), shards in 2u32..9) {
            for key in random_keys(seed, 2_000) {
                let before = shard_for_key(&key, 0..shards).unwrap();
                let after = shard_for_key(&key, 0..shards - 1).unwrap();
                prop_assert!(before == after || before == shards - 1);
            }
        }

        /// For any key set, shard sizes stay within six standard deviations of the even share
        /// (the spread of an ideal random placement; the fixed-seed test above pins ±5%).
        #[test]
        fn balance_is_that_of_a_random_placement(seed in any::<u64>(), shards in 2u32..9) {
            let keys = random_keys(seed, 10_000);
            let p = 1.0 / f64::from(shards);
            let even = keys.len() as f64 * p;
            let sigma = (keys.len() as f64 * p * (1.0 - p)).sqrt();
            for &count in &counts(&keys, shards) {
                prop_assert!((count as f64 - even).abs() <= 6.0 * sigma);
            }
        }
    }
}
#[cfg(test)]
mod measure {
    #[test]
    #[ignore]
    fn failure_rate_of_five_percent_over_seeds() {
        for shards in 2..=8u32 {
            let mut fails = 0;
            let mut worst: f64 = 0.0;
            for seed in 0..200u64 {
                let keys = super::tests::random_keys_pub(seed, 10_000);
                let mut counts = vec![0usize; shards as usize];
                for k in &keys {
                    counts[super::shard_for_key(k, 0..shards).unwrap() as usize] += 1;
                }
                let even = 10_000.0 / f64::from(shards);
                let off = counts
                    .iter()
                    .map(|&c| (c as f64 - even).abs() / even)
                    .fold(0.0, f64::max);
                worst = worst.max(off);
                if off > 0.05 {
                    fails += 1;
                }
            }
            println!(
                "shards {shards}: {fails}/200 key sets exceed 5%, worst {:.1}%",
                worst * 100.0
            );
        }
    }
}
