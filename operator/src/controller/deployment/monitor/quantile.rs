//! Quantiles from cumulative histogram buckets, as Prometheus's
//! `histogram_quantile` computes them: find the bucket holding the rank, and
//! interpolate linearly within it (assuming observations spread evenly there).

use super::exposition::Buckets;

/// The `q`-quantile (0..=1) of the observations in `buckets`, or none when there
/// are none. A rank in the `+Inf` bucket answers the highest finite bound (the
/// best that can be said); the first bucket interpolates from 0 when its bound is
/// positive.
pub fn quantile(q: f64, buckets: &Buckets) -> Option<f64> {
    let b = &buckets.0;
    let total = buckets.count();
    if b.is_empty() || total <= 0.0 || !q.is_finite() {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    let rank = q * total;
    let index = b.iter().position(|(_, count)| *count >= rank)?;
    let (upper, count) = b[index];
    if upper.is_infinite() {
        // Prometheus answers the upper bound of the second-highest bucket.
        return b
            .iter()
            .rev()
            .find(|(le, _)| le.is_finite())
            .map(|(le, _)| *le);
    }
    let (lower, below) = if index == 0 {
        (if upper > 0.0 { 0.0 } else { upper }, 0.0)
    } else {
        b[index - 1]
    };
    let in_bucket = count - below;
    if in_bucket <= 0.0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / in_bucket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(b: &[(f64, f64)]) -> Buckets {
        Buckets(b.to_vec())
    }

    #[test]
    fn worked_example_interpolates_within_the_bucket() {
        // 100 observations: 10 ≤ 0.1, 60 ≤ 0.2, 90 ≤ 0.4, 100 ≤ +Inf.
        let h = buckets(&[
            (0.1, 10.0),
            (0.2, 60.0),
            (0.4, 90.0),
            (f64::INFINITY, 100.0),
        ]);
        // Rank 50 lies in (0.1, 0.2]: 40 of its 50 observations → 0.1 + 0.1 × 40/50.
        assert!((quantile(0.5, &h).unwrap() - 0.18).abs() < 1e-12);
        // Rank 80 lies in (0.2, 0.4]: 20 of 30 → 0.2 + 0.2 × 20/30.
        assert!((quantile(0.8, &h).unwrap() - (0.2 + 0.2 * 20.0 / 30.0)).abs() < 1e-12);
        // Rank 5 in the first bucket interpolates from 0.
        assert!((quantile(0.05, &h).unwrap() - 0.05).abs() < 1e-12);
    }

    #[test]
    fn a_rank_in_the_infinite_bucket_answers_the_highest_finite_bound() {
        let h = buckets(&[(0.1, 10.0), (0.4, 90.0), (f64::INFINITY, 100.0)]);
        assert_eq!(quantile(0.95, &h), Some(0.4));
    }

    #[test]
    fn no_observations_no_quantile() {
        assert_eq!(
            quantile(0.5, &buckets(&[(0.1, 0.0), (f64::INFINITY, 0.0)])),
            None
        );
        assert_eq!(quantile(0.5, &Buckets::default()), None);
    }

    #[test]
    fn quantiles_follow_the_server_buckets() {
        // The server's exponential buckets (5 ms × 2^k): 20 requests at 30 ms and
        // 20 at 300 ms put p50 at the top of (20, 40] ms and p95 inside (160, 320] ms.
        let mut b = Vec::new();
        let mut le = 0.005;
        for _ in 0..15 {
            let count = if le >= 0.3 {
                40.0
            } else if le >= 0.03 {
                20.0
            } else {
                0.0
            };
            b.push((le, count));
            le *= 2.0;
        }
        b.push((f64::INFINITY, 40.0));
        let h = Buckets(b);
        assert!((quantile(0.5, &h).unwrap() - 0.04).abs() < 1e-12);
        let p95 = quantile(0.95, &h).unwrap();
        assert!((0.16..=0.32).contains(&p95), "{p95}");
        assert!((p95 - (0.16 + 0.16 * 18.0 / 20.0)).abs() < 1e-12);
    }
}
