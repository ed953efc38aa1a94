//! Progress of the loop: the `status.progress` snapshot and its one-line summary.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use llmops_crds::common::TrainingProgress;

use super::Loop;

/// Now, as the API's timestamp type.
pub(super) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

impl Loop<'_> {
    /// Updates the snapshot after a step and hands it to the reporter (rank 0
    /// has one), which throttles what reaches the API or the terminal.
    pub(super) fn report(&mut self, lr: f64) {
        let step = self.state.step;
        let plan = self.s.plan;
        let p = &mut self.progress;
        p.step = step;
        p.tokens_seen = self.state.tokens_seen;
        p.train_loss = Some(self.losses.iter().sum::<f64>() / self.losses.len().max(1) as f64);
        p.validation_loss = self.state.validation_loss;
        p.validation_perplexity = self.state.validation_loss.map(f64::exp);
        p.learning_rate = Some(lr);
        let elapsed = self.started.elapsed().as_secs_f64();
        let done = step - self.started_step;
        if done > 0 && elapsed > 0.0 {
            p.tokens_per_second = Some((done * plan.tokens_per_step()) as f64 / elapsed);
            p.eta_seconds = Some(((plan.total_steps - step) as f64 * elapsed / done as f64) as i64);
        }
        p.update_time = Some(now());
        if let Some(reporter) = &self.s.reporter {
            let summary = summary(p);
            reporter.report(serde_json::to_value(&*p).unwrap_or_default(), &summary);
        }
    }
}

/// One human line of progress.
pub fn summary(p: &TrainingProgress) -> String {
    let mut s = format!("step {}/{}", p.step, p.total_steps);
    if let Some(l) = p.train_loss {
        s += &format!(" loss {l:.4}");
    }
    if let (Some(v), Some(ppl)) = (p.validation_loss, p.validation_perplexity) {
        s += &format!(" val {v:.4} (ppl {ppl:.1})");
    }
    if let Some(t) = p.tokens_per_second {
        s += &format!(" {t:.0} tok/s");
    }
    if let Some(lr) = p.learning_rate {
        s += &format!(" lr {lr:.2e}");
    }
    if let Some(eta) = p.eta_seconds {
        s += &format!(" eta {eta}s");
    }
    s
}
