//! Continuing a run: the newest checkpoint (fetched from the mirror when the
//! output is remote), the per-step log cut back to it, and the same starting
//! weights on every rank.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use llmops_crds::common::CheckpointInfo;
use llmops_model::{Config, io};

use super::report::now;
use super::{Loop, TRAIN_LOG};
use crate::train::TrainError;
use crate::train::checkpoint::Newest;

impl Loop<'_> {
    /// Continues from the newest complete checkpoint, if any.
    pub(super) fn resume(&mut self) -> Result<(), TrainError> {
        if let Some(mirror) = &self.s.mirror {
            let local = self.s.checkpoints.list()?.last().map(|(step, _)| *step);
            if let Some(step) =
                mirror.download_newest(self.s.checkpoints.root(), local, TRAIN_LOG)?
            {
                tracing::info!(step, "downloaded the newest checkpoint");
            }
        }
        let newest = self.s.checkpoints.newest()?;
        if !newest.set_aside.is_empty() {
            self.progress.note = Some(set_aside_note(&newest));
        }
        let Some((state, dir)) = newest.found else {
            return Ok(());
        };
        let foreign = |reason: String| TrainError::ForeignCheckpoint {
            path: dir.display().to_string(),
            reason,
        };
        if state.dataset_digest != self.state.dataset_digest {
            return Err(foreign(format!(
                "made on dataset {}, this run trains on {}",
                state.dataset_digest, self.state.dataset_digest
            )));
        }
        let saved = Config::from_file(dir.join(io::CONFIG_FILE))?;
        let differences = architecture_differences(&saved, &self.s.plan.model);
        if !differences.is_empty() {
            // A fresh model is the PretrainJob's spec.model; fine-tuning's is
            // the base model's.
            let ours = if self.s.base.is_some() {
                "the base model"
            } else {
                "spec.model"
            };
            return Err(foreign(format!(
                "its model differs from {ours} in {}",
                differences.join(", ")
            )));
        }
        io::load_weights(&self.vs, &self.s.plan.model, &dir)?;
        self.load_optimizer(&dir, &state).map_err(foreign)?;
        self.parameters_from_masters()?;
        self.loader.seek(state.cursor);
        tracing::info!(step = state.step, checkpoint = %dir.display(), "resuming");
        self.progress.step = state.step;
        self.progress.tokens_seen = state.tokens_seen;
        self.progress.train_loss = state.train_loss;
        self.progress.validation_loss = state.validation_loss;
        self.progress.validation_perplexity = state.validation_loss.map(f64::exp);
        self.progress.last_checkpoint = Some(self.checkpoint_info(state.step, &state.time));
        self.started_step = state.step;
        self.state = state;
        self.state.world_size = self.s.collective.world_size();
        // Saved from now on as this run keeps it.
        self.state.zero_stage = self.opt.zero_stage();
        Ok(())
    }

    pub(super) fn checkpoint_info(&self, step: i64, time: &str) -> CheckpointInfo {
        CheckpointInfo {
            step,
            uri: format!(
                "{}/step-{step}",
                self.s.checkpoints_uri.trim_end_matches('/')
            ),
            time: time.parse().map(Time).unwrap_or_else(|_| now()),
        }
    }

    /// Every rank starts from rank 0's weights (they agree already when seeded
    /// alike or resumed from one checkpoint; this makes it a guarantee).
    pub(super) fn sync_initial_weights(&mut self) -> Result<(), TrainError> {
        if self.s.collective.world_size() == 1 {
            return Ok(());
        }
        self.s.collective.broadcast(&self.opt.parameters())?;
        Ok(())
    }

    /// The per-step log of rank 0, cut back to the resumed step so that it always
    /// describes one consistent run.
    pub(super) fn open_log(&mut self) -> Result<(), TrainError> {
        if self.rank() != 0 {
            return Ok(());
        }
        let root = self.s.checkpoints.root();
        std::fs::create_dir_all(root)
            .map_err(TrainError::io(format!("create {}", root.display())))?;
        let path = root.join(TRAIN_LOG);
        let kept: String = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_i64())
                    .is_some_and(|s| s <= self.state.step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, kept).map_err(TrainError::io(format!("write {}", path.display())))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(TrainError::io(format!("open {}", path.display())))?;
        self.log = Some(file);
        Ok(())
    }
}

/// The architecture settings in which two configs differ, as `name a → b`.
/// Token ids and dtype may differ: they do not change the parameters.
fn architecture_differences(saved: &Config, ours: &Config) -> Vec<String> {
    let fields: [(&str, String, String); 12] = [
        (
            "family",
            format!("{:?}", saved.family),
            format!("{:?}", ours.family),
        ),
        (
            "vocab",
            saved.vocab_size.to_string(),
            ours.vocab_size.to_string(),
        ),
        (
            "hidden",
            saved.hidden_size.to_string(),
            ours.hidden_size.to_string(),
        ),
        (
            "intermediate",
            saved.intermediate_size().to_string(),
            ours.intermediate_size().to_string(),
        ),
        (
            "layers",
            saved.num_layers.to_string(),
            ours.num_layers.to_string(),
        ),
        (
            "heads",
            saved.num_heads.to_string(),
            ours.num_heads.to_string(),
        ),
        (
            "kvHeads",
            saved.num_kv_heads().to_string(),
            ours.num_kv_heads().to_string(),
        ),
        (
            "contextLength",
            saved.max_position_embeddings.to_string(),
            ours.max_position_embeddings.to_string(),
        ),
        (
            "tiedEmbeddings",
            saved.tie_word_embeddings.to_string(),
            ours.tie_word_embeddings.to_string(),
        ),
        (
            "ropeTheta",
            saved.rope_theta.to_string(),
            ours.rope_theta.to_string(),
        ),
        (
            "dropout",
            saved.attn_dropout.to_string(),
            ours.attn_dropout.to_string(),
        ),
        (
            "normEps",
            saved.norm_eps.to_string(),
            ours.norm_eps.to_string(),
        ),
    ];
    fields
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(name, a, b)| format!("{name} {a} → {b}"))
        .collect()
}

/// `progress.note` when corrupt checkpoints were set aside.
fn set_aside_note(newest: &Newest) -> String {
    let corrupt: Vec<String> = newest
        .set_aside
        .iter()
        .map(|c| format!("step-{} ({})", c.step, c.reason))
        .collect();
    let resumed = newest
        .found
        .as_ref()
        .map_or("started over".to_string(), |(state, _)| {
            format!("resumed from step-{}", state.step)
        });
    format!(
        "{resumed}: corrupt checkpoints set aside as step-<n>.corrupt: {}",
        corrupt.join("; ")
    )
}
