//! Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p)
//! sampling with a seeded generator, in the order `transformers` applies them
//! (temperature, then top-k, then top-p).

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// The decoding strategy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Always the most likely token (deterministic).
    Greedy,
    /// Draw from the softmax of `logits / temperature`, optionally restricted to the
    /// `top_k` most likely tokens and then to the smallest set whose probability
    /// reaches `top_p`.
    Sample {
        temperature: f64,
        top_k: Option<usize>,
        top_p: Option<f64>,
    },
}

impl Sampling {
    /// Builds a strategy from OpenAI-style request parameters; a temperature of 0
    /// means greedy, as in the OpenAI API.
    pub fn from_params(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> Result<Self> {
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(Error::InvalidInput(format!(
                "temperature must be a finite number >= 0, got {temperature}"
            )));
        }
        if top_k == Some(0) {
            return Err(Error::InvalidInput("top_k must be at least 1".into()));
        }
        if let Some(p) = top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(Error::InvalidInput(format!(
                "top_p must be in (0, 1], got {p}"
            )));
        }
        if temperature == 0.0 || top_k == Some(1) {
            return Ok(Sampling::Greedy);
        }
        Ok(Sampling::Sample {
            temperature,
            top_k,
            top_p: top_p.filter(|&p| p < 1.0),
        })
    }
}

/// Turns logits into token ids; one per sequence, seeded for reproducibility.
#[derive(Debug, Clone)]
pub struct LogitsProcessor {
    sampling: Sampling,
    rng: SplitMix64,
}

impl LogitsProcessor {
    pub fn new(seed: u64, sampling: Sampling) -> Self {
        LogitsProcessor {
            sampling,
            rng: SplitMix64(seed),
        }
    }

    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    /// Picks a token from 1-D `logits` `[vocab]` of any float dtype, on any device.
    pub fn sample(&mut self, logits: &Tensor) -> Result<i64> {
        if logits.dim() != 1 {
            return Err(Error::InvalidInput(format!(
                "expected 1-D logits, got shape {:?}",
                logits.size()
            )));
        }
        let values = Vec::<f32>::try_from(&logits.f_to_kind(Kind::Float)?.f_to(tch::Device::Cpu)?)?;
        Ok(self.sample_slice(&values)? as i64)
    }

    /// Picks an index into `logits`.
    pub fn sample_slice(&mut self, logits: &[f32]) -> Result<usize> {
        if logits.is_empty() {
            return Err(Error::InvalidInput(
                "cannot sample from empty logits".into(),
            ));
        }
        // NaN would poison every comparison below; treat it as impossible.
        let logit = |i: usize| {
            let x = logits[i];
            if x.is_nan() { f32::NEG_INFINITY } else { x }
        };
        match self.sampling {
            Sampling::Greedy => Ok(argmax(logits.len(), logit)),
            Sampling::Sample {
                temperature,
                top_k,
                top_p,
            } => {
                let mut order: Vec<usize> = (0..logits.len()).collect();
                if let Some(k) = top_k.filter(|&k| k < logits.len()) {
                    order.select_nth_unstable_by(k - 1, |&a, &b| logit(b).total_cmp(&logit(a)));
                    order.truncate(k);
                }
                if top_p.is_some() {
                    order.sort_by(|&a, &b| logit(b).total_cmp(&logit(a)));
                }
                let max = order
                    .iter()
                    .map(|&i| logit(i))
                    .fold(f32::NEG_INFINITY, f32::max);
                if max == f32::NEG_INFINITY {
                    return Err(Error::InvalidInput("every logit is -inf or NaN".into()));
                }
                let mut probs: Vec<f64> = order
                    .iter()
                    .map(|&i| ((f64::from(logit(i)) - f64::from(max)) / temperature).exp())
                    .collect();
                let total: f64 = probs.iter().sum();
                probs.iter_mut().for_each(|p| *p /= total);
                if let Some(p) = top_p {
                    // Keep the smallest prefix (by decreasing probability) reaching p.
                    let mut cumulative = 0.0;
                    let keep = probs
                        .iter()
                        .position(|&q| {
                            cumulative += q;
                            cumulative >= p
                        })
                        .map_or(probs.len(), |i| i + 1);
                    probs.truncate(keep);
                    order.truncate(keep);
                }
                Ok(order[self.draw(&probs)])
            }
        }
    }

    /// Index drawn from unnormalised weights.
    fn draw(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut target = self.rng.next_f64() * total;
        for (i, &w) in weights.iter().enumerate() {
            if target < w {
                return i;
            }
            target -= w;
        }
        // Rounding can leave a sliver past the end; it belongs to the last non-zero weight.
        weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
    }
}

fn argmax(len: usize, logit: impl Fn(usize) -> f32) -> usize {
    (1..len).fold(0, |best, i| if logit(i) > logit(best) { i } else { best })
}

/// SplitMix64: tiny, fast and fully specified, so a seed gives the same tokens on
/// every platform and across dependency upgrades (which general-purpose RNG crates
/// do not promise for their default generators).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(sampling: Sampling, logits: &[f32], n: usize) -> Vec<usize> {
        let mut lp = LogitsProcessor::new(42, sampling);
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[lp.sample_slice(logits).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn greedy_picks_the_first_maximum() {
        let mut lp = LogitsProcessor::new(0, Sampling::Greedy);
        assert_eq!(lp.sample_slice(&[0.1, 3.0, -1.0, 3.0]).unwrap(), 1);
        assert_eq!(lp.sample_slice(&[f32::NAN, -1.0]).unwrap(), 1);
    }

    #[test]
    fn from_params_maps_openai_conventions() {
        assert_eq!(
            Sampling::from_params(0.0, None, Some(0.9)).unwrap(),
            Sampling::Greedy
        );
        assert_eq!(
            Sampling::from_params(0.7, Some(1), None).unwrap(),
            Sampling::Greedy
        );
        assert_eq!(
            Sampling::from_params(1.0, None, Some(1.0)).unwrap(),
            Sampling::Sample {
                temperature: 1.0,
                top_k: None,
                top_p: None
            }
        );
        assert!(Sampling::from_params(-1.0, None, None).is_err());
        assert!(Sampling::from_params(1.0, Some(0), None).is_err());
        assert!(Sampling::from_params(1.0, None, Some(0.0)).is_err());
        assert!(Sampling::from_params(f64::NAN, None, None).is_err());
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let s = Sampling::Sample {
            temperature: 1.0,
            top_k: None,
            top_p: None,
        };
        let run = |seed| {
            let mut lp = LogitsProcessor::new(seed, s);
            (0..20)
                .map(|_| lp.sample_slice(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn temperature_sampling_follows_softmax() {
        // Probabilities 0.1, 0.2, 0.3, 0.4 at temperature 1.
        let logits: Vec<f32> = [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect();
        let n = 40_000;
        let c = counts(
            Sampling::Sample {
                temperature: 1.0,
                top_k: None,
                top_p: None,
            },
            &logits,
            n,
        );
        for (i, want) in [0.1, 0.2, 0.3, 0.4].iter().enumerate() {
            let got = c[i] as f64 / n as f64;
            assert!((got - want).abs() < 0.01, "token {i}: {got} vs {want}");
        }
        // A low temperature sharpens towards the maximum.
        let c = counts(
            Sampling::Sample {
                temperature: 0.05,
                top_k: None,
                top_p: None,
            },
            &logits,
            1000,
        );
        assert!(c[3] > 990, "{c:?}");
    }

    #[test]
    fn top_k_restricts_to_the_k_best() {
        let logits = [1.0f32, 5.0, 2.0, 4.0, 3.0];
        let c = counts(
            Sampling::Sample {
                temperature: 1.0,
                top_k: Some(2),
                top_p: None,
            },
            &logits,
            5000,
        );
        assert_eq!(c[0] + c[2] + c[4], 0, "{c:?}");
        assert!(c[1] > c[3] && c[3] > 0, "{c:?}");
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // Probabilities 0.5, 0.3, 0.15, 0.05: p=0.75 needs the first two.
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let n = 20_000;
        let c = counts(
            Sampling::Sample {
                temperature: 1.0,
                top_k: None,
                top_p: Some(0.75),
            },
            &logits,
            n,
        );
        assert_eq!(c[2] + c[3], 0, "{c:?}");
        let share = c[0] as f64 / n as f64;
        assert!(
            (share - 0.625).abs() < 0.015,
            "renormalised 0.5/0.8, got {share}"
        );
        // A tiny p still keeps the single best token.
        let c = counts(
            Sampling::Sample {
                temperature: 1.0,
                top_k: None,
                top_p: Some(1e-9),
            },
            &logits,
            100,
        );
        assert_eq!(c[0], 100);
    }

    #[test]
    fn top_k_then_top_p() {
        let logits: Vec<f32> = [0.4f32, 0.3, 0.2, 0.1].iter().map(|p| p.ln()).collect();
        // top_k=3 leaves 0.4/0.9, 0.3/0.9, 0.2/0.9; top_p=0.5 then keeps 0.44 + 0.33.
        let c = counts(
            Sampling::Sample {
                temperature: 1.0,
                top_k: Some(3),
                top_p: Some(0.5),
            },
            &logits,
            5000,
        );
        assert_eq!(c[2] + c[3], 0, "{c:?}");
        assert!(c[0] > 0 && c[1] > 0);
    }

    #[test]
    fn rejects_degenerate_logits() {
        let mut lp = LogitsProcessor::new(
            0,
            Sampling::Sample {
                temperature: 1.0,
                top_k: None,
                top_p: None,
            },
        );
        assert!(lp.sample_slice(&[]).is_err());
        assert!(lp.sample_slice(&[f32::NEG_INFINITY, f32::NAN]).is_err());
        assert_eq!(lp.sample_slice(&[f32::NEG_INFINITY, 0.0]).unwrap(), 1);
    }

    #[test]
    fn samples_from_a_tensor() {
        let mut lp = LogitsProcessor::new(0, Sampling::Greedy);
        let t = Tensor::from_slice(&[0.0f32, 2.0, 1.0]).to_kind(Kind::BFloat16);
        assert_eq!(lp.sample(&t).unwrap(), 1);
        assert!(lp.sample(&t.reshape([1, 3])).is_err());
    }
}
