//! A sorted map whose clone is cheap and whose edits copy little.
//!
//! The published snapshot and the writer's next one share their maps: the
//! writer clones a map, edits a few entries and publishes the result, while
//! streams still read the old one. With a `BTreeMap` that clone copied every
//! entry (30,000 at 15,000 policies) for each change. Here the entries live
//! in sorted chunks of at most [`MAX_CHUNK`], each behind an `Arc`: a clone
//! copies one pointer per chunk, an edit copies the one chunk it touches,
//! and two maps that share chunks are compared chunk by chunk, skipping the
//! shared ones ([`CowMap::diff`]).
//!
//! A persistent B-tree crate would do the same; the ones we found are
//! MPL-licensed, which deny.toml does not allow, and this is all we need.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// A chunk splits in two when it grows past this.
const MAX_CHUNK: usize = 128;

/// A sorted map of shared, copy-on-write chunks.
pub struct CowMap<K, V> {
    /// Non-empty, sorted, and every key of a chunk is below the next chunk's.
    chunks: Vec<Arc<Vec<(K, V)>>>,
    len: usize,
}

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        CowMap {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<K, V> Clone for CowMap<K, V> {
    fn clone(&self) -> Self {
        CowMap {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }
}

impl<K: Ord + fmt::Debug, V: fmt::Debug> fmt::Debug for CowMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for CowMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = CowMap::default();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl<K: Ord, V> CowMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk that holds `key` if any chunk does: the first whose last
    /// key is not below it.
    fn chunk_of<Q: Ord + ?Sized>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
    {
        self.chunks.partition_point(|c| match c.last() {
            Some((last, _)) => last.borrow() < key,
            None => true,
        })
    }

    /// The entry for `key`.
    pub fn get_key_value<Q: Ord + ?Sized>(&self, key: &Q) -> Option<(&K, &V)>
    where
        K: Borrow<Q>,
    {
        let chunk = self.chunks.get(self.chunk_of(key))?;
        let i = chunk.binary_search_by(|(k, _)| k.borrow().cmp(key)).ok()?;
        let (k, v) = &chunk[i];
        Some((k, v))
    }

    /// The value for `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.get_key_value(key).map(|(_, v)| v)
    }

    /// Whether `key` is present.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get_key_value(key).is_some()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + Clone + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.iter().map(|(k, v)| (k, v)))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> + Clone + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> + Clone + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// Calls `changed` for every key present in only one of the maps or
    /// whose values differ by `same`, in key order. Chunks the two maps
    /// share are skipped whole, so comparing a map with the one it was
    /// cloned from costs what was edited since, not its size. Stops early
    /// when `changed` returns false; returns whether it ran to the end.
    pub fn diff<'a>(
        &'a self,
        older: &'a CowMap<K, V>,
        same: impl Fn(&V, &V) -> bool,
        mut changed: impl FnMut(&'a K) -> bool,
    ) -> bool {
        let (a, b) = (&self.chunks, &older.chunks);
        // (chunk, index in chunk) of the next entry of each side.
        let (mut ca, mut ia, mut cb, mut ib) = (0, 0, 0, 0);
        loop {
            if ia == 0 && ib == 0 && ca < a.len() && cb < b.len() && Arc::ptr_eq(&a[ca], &b[cb]) {
                ca += 1;
                cb += 1;
                continue;
            }
            let x = a.get(ca).map(|c| &c[ia]);
            let y = b.get(cb).map(|c| &c[ib]);
            let order = match (x, y) {
                (None, None) => return true,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((kx, _)), Some((ky, _))) => kx.cmp(ky),
            };
            let (step_a, step_b, key) = match (order, x, y) {
                (Ordering::Less, Some((k, _)), _) => (true, false, Some(k)),
                (Ordering::Greater, _, Some((k, _))) => (false, true, Some(k)),
                (_, Some((k, vx)), Some((_, vy))) => (true, true, (!same(vx, vy)).then_some(k)),
                _ => unreachable!("an order is only taken with the entries it compares"),
            };
            if let Some(k) = key {
                if !changed(k) {
                    return false;
                }
            }
            if step_a {
                ia += 1;
                if ia == a[ca].len() {
                    (ca, ia) = (ca + 1, 0);
                }
            }
            if step_b {
                ib += 1;
                if ib == b[cb].len() {
                    (cb, ib) = (cb + 1, 0);
                }
            }
        }
    }
}

impl<K: Ord + Clone, V: Clone> CowMap<K, V> {
    /// Inserts or replaces; returns the value replaced. Copies the one
    /// chunk it edits if another map shares it.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if self.chunks.is_empty() {
            self.chunks.push(Arc::new(vec![(key, value)]));
            self.len = 1;
            return None;
        }
        // A key above every chunk goes to the last one.
        let i = self.chunk_of(&key).min(self.chunks.len() - 1);
        let chunk = Arc::make_mut(&mut self.chunks[i]);
        match chunk.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(j) => return Some(std::mem::replace(&mut chunk[j].1, value)),
            Err(j) => chunk.insert(j, (key, value)),
        }
        self.len += 1;
        if chunk.len() > MAX_CHUNK {
            let tail = chunk.split_off(chunk.len() / 2);
            self.chunks.insert(i + 1, Arc::new(tail));
        }
        None
    }

    /// Removes `key`; returns its value. Copies nothing when it is absent.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.chunk_of(key);
        let j = self
            .chunks
            .get(i)?
            .binary_search_by(|(k, _)| k.borrow().cmp(key))
            .ok()?;
        let chunk = Arc::make_mut(&mut self.chunks[i]);
        let (_, v) = chunk.remove(j);
        if chunk.is_empty() {
            self.chunks.remove(i);
        }
        self.len -= 1;
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A small deterministic generator, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn same_as(m: &CowMap<u64, u64>, r: &BTreeMap<u64, u64>) {
        assert_eq!(m.len(), r.len());
        assert!(m
            .iter()
            .map(|(k, v)| (*k, *v))
            .eq(r.iter().map(|(k, v)| (*k, *v))));
        for c in &m.chunks {
            assert!(!c.is_empty() && c.len() <= MAX_CHUNK);
        }
        for k in 0..1200 {
            assert_eq!(m.get(&k), r.get(&k), "key {k}");
        }
    }

    fn reference_diff(a: &BTreeMap<u64, u64>, b: &BTreeMap<u64, u64>) -> Vec<u64> {
        let mut keys: Vec<u64> = a.keys().chain(b.keys()).copied().collect();
        keys.sort();
        keys.dedup();
        keys.retain(|k| a.get(k) != b.get(k));
        keys
    }

    fn diff(a: &CowMap<u64, u64>, b: &CowMap<u64, u64>) -> Vec<u64> {
        let mut out = Vec::new();
        assert!(a.diff(
            b,
            |x, y| x == y,
            |k| {
                out.push(*k);
                true
            }
        ));
        out
    }

    #[test]
    fn behaves_as_a_btreemap_under_random_edits_and_clones() {
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut m = CowMap::new();
            let mut r = BTreeMap::new();
            for round in 0..40 {
                let older = m.clone();
                let older_ref = r.clone();
                // A burst of edits, as between two snapshots: a few at
                // first, then many, so chunks split and empty.
                let edits = if round < 20 {
                    1 + rng.next(5)
                } else {
                    1 + rng.next(400)
                };
                for _ in 0..edits {
                    let k = rng.next(1000);
                    if rng.next(3) == 0 {
                        assert_eq!(m.remove(&k), r.remove(&k), "seed {seed} remove {k}");
                    } else {
                        let v = rng.next(4);
                        assert_eq!(m.insert(k, v), r.insert(k, v), "seed {seed} insert {k}");
                    }
                }
                same_as(&m, &r);
                // The clone taken before the edits did not see them.
                same_as(&older, &older_ref);
                assert_eq!(
                    diff(&m, &older),
                    reference_diff(&r, &older_ref),
                    "seed {seed}"
                );
                assert_eq!(
                    diff(&older, &m),
                    reference_diff(&r, &older_ref),
                    "seed {seed}"
                );
            }
        }
    }

    #[test]
    fn diff_of_unrelated_maps_compares_entries() {
        // (left, right, keys that differ)
        type Case = (&'static [(u64, u64)], &'static [(u64, u64)], &'static [u64]);
        let cases: &[Case] = &[
            (&[], &[], &[]),
            (&[(1, 1)], &[], &[1]),
            (&[], &[(1, 1)], &[1]),
            (&[(1, 1), (2, 2)], &[(1, 1), (2, 2)], &[]),
            (&[(1, 1), (2, 2)], &[(1, 1), (2, 3)], &[2]),
            (&[(1, 1), (3, 3)], &[(2, 2), (3, 3)], &[1, 2]),
        ];
        for (a, b, want) in cases {
            let a: CowMap<u64, u64> = a.iter().copied().collect();
            let b: CowMap<u64, u64> = b.iter().copied().collect();
            assert_eq!(diff(&a, &b), *want);
        }
    }

    #[test]
    fn an_edit_copies_one_chunk_and_a_diff_skips_shared_ones() {
        let m: CowMap<u64, u64> = (0..10_000).map(|k| (k, k)).collect();
        let mut n = m.clone();
        n.insert(5_000, 0);
        let shared = m
            .chunks
            .iter()
            .zip(&n.chunks)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, m.chunks.len() - 1);
        // The comparison looks at the copied chunk's entries only.
        let compared = std::cell::Cell::new(0);
        n.diff(
            &m,
            |a, b| {
                compared.set(compared.get() + 1);
                a == b
            },
            |_| true,
        );
        assert!(compared.get() <= MAX_CHUNK, "compared {}", compared.get());
        // Stopping early.
        let mut seen = 0;
        assert!(!n.diff(
            &m,
            |a, b| a == b,
            |_| {
                seen += 1;
                false
            }
        ));
        assert_eq!(seen, 1);
    }
}
