//! A latency histogram with fixed memory: exact below 32 ns, then 32 buckets per
//! power of two (a value is reported within 1/64 of itself), so a run of any length
//! costs the same and percentiles need no sorting.

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let mantissa = v >> shift; // in [SUB, 2*SUB)
    ((u64::from(shift) + 1) * SUB + (mantissa - SUB)) as usize
}

/// The middle of bucket `i`.
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let lower = (SUB + i % SUB) << shift;
    lower + ((1u64 << shift) >> 1)
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.count += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    pub fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// The value below which `p` percent of the samples lie (nearest rank), clamped
    /// to the exact minimum and maximum.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p / 100.0 * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(value(i).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_values_close() {
        let mut last = 0;
        for v in (0u64..100_000).chain([u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(i == last || i == last + 1 || v > 100_000, "gap at {v}");
            last = i;
            let mid = value(i);
            let err = mid.abs_diff(v) as f64;
            assert!(err <= (v as f64) / 64.0 + 0.5, "{v} reported as {mid}");
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_and_mean() {
        let mut h = Histogram::new();
        assert_eq!(h.percentile(50.0), None);
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.mean(), Some(500_500.0));
        let p50 = h.percentile(50.0).unwrap();
        assert!((492_000..=508_000).contains(&p50), "{p50}");
        let p99 = h.percentile(99.0).unwrap();
        assert!((975_000..=1_000_000).contains(&p99), "{p99}");
        assert_eq!(h.percentile(100.0), Some(1_000_000));
        assert_eq!(h.percentile(0.0), Some(1000));
        let mut g = Histogram::new();
        g.record(5);
        g.merge(&h);
        assert_eq!(
            (g.count(), g.min(), g.max()),
            (1001, Some(5), Some(1_000_000))
        );
    }
}
