//! Learning rate per optimizer step: linear warmup from 0, then decay to the
//! minimum over the remaining steps.

use llmops_crds::common::LrSchedule;

/// A warmup-then-decay schedule over `total` optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: LrSchedule,
    pub peak: f64,
    pub min: f64,
    pub warmup: i64,
    pub total: i64,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based: the first update uses
    /// `lr(0)`), as in nanoGPT: warmup reaches the peak at step `warmup`.
    pub fn lr(&self, step: i64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / (self.warmup + 1) as f64;
        }
        let decay_steps = (self.total - self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / decay_steps as f64).clamp(0.0, 1.0);
        let factor = match self.kind {
            LrSchedule::Constant => return self.peak,
            LrSchedule::Linear => 1.0 - progress,
            LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.min + factor * (self.peak - self.min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: LrSchedule) -> Schedule {
        Schedule {
            kind,
            peak: 1.0,
            min: 0.1,
            warmup: 4,
            total: 14,
        }
    }

    #[test]
    fn warms_up_linearly_then_decays_to_the_minimum() {
        let s = schedule(LrSchedule::Cosine);
        assert!((s.lr(0) - 0.2).abs() < 1e-12);
        assert!((s.lr(3) - 0.8).abs() < 1e-12);
        assert!((s.lr(4) - 1.0).abs() < 1e-12);
        assert!((s.lr(9) - 0.55).abs() < 1e-12, "cosine midpoint");
        assert!((s.lr(14) - 0.1).abs() < 1e-12);
        assert!((s.lr(100) - 0.1).abs() < 1e-12, "stays at the minimum");
        let l = schedule(LrSchedule::Linear);
        assert!((l.lr(9) - 0.55).abs() < 1e-12);
        assert!((l.lr(6) - (0.1 + 0.8 * 0.9)).abs() < 1e-12);
        let c = schedule(LrSchedule::Constant);
        assert_eq!(c.lr(13), 1.0);
    }
}
