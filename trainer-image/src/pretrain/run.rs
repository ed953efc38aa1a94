//! The training loop: micro-steps with gradient accumulation, the data-parallel
//! all-reduce, clipping, AdamW, evaluation, checkpoints and progress.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use llmops_crds::common::{CheckpointInfo, Precision, TrainingProgress};
use llmops_model::{Config, GenerationConfig, Model, io};
use tch::{Device, Tensor, nn};

use super::{Plan, PretrainError};
use crate::artifact::DatasetArtifact;
use crate::progress::Reporter;
use crate::train::checkpoint::{Checkpoints, OPTIMIZER_FILE, TrainerState};
use crate::train::data::{self, Loader, MicroBatch};
use crate::train::distributed::{Collective, flatten, unflatten};
use crate::train::interrupt::Interrupt;
use crate::train::loss::{evaluate, summed_loss};
use crate::train::mirror::Mirror;
use crate::train::optimizer::AdamW;

/// Validation rows scored at each evaluation: enough for a stable estimate,
/// few enough that evaluation stays a small fraction of training time.
pub const MAX_EVAL_ROWS: u64 = 256;
/// Training losses averaged into `progress.trainLoss`.
const LOSS_WINDOW: usize = 10;
/// The per-step log, inside the checkpoint directory so it never mixes with the
/// exported model files.
pub const TRAIN_LOG: &str = "train_log.jsonl";

/// Everything the loop needs.
pub struct Session<'a> {
    pub plan: &'a Plan,
    pub dataset: &'a DatasetArtifact,
    pub checkpoints: Checkpoints,
    /// URI of the checkpoint directory, for status.
    pub checkpoints_uri: String,
    pub device: Device,
    pub collective: Box<dyn Collective>,
    /// Only rank 0 reports.
    pub reporter: Option<Reporter>,
    pub interrupt: Interrupt,
    /// Remote copy of the checkpoints, for object-store outputs.
    pub mirror: Option<Mirror>,
}

/// The state at the end of the loop.
pub struct Trained {
    pub vs: nn::VarStore,
    pub model: Model,
    pub state: TrainerState,
    pub progress: TrainingProgress,
    /// Stopped by a signal (a checkpoint holds `state`).
    pub interrupted: bool,
}

/// The dropout seed of one micro-step: a pure function of the counters, so a
/// resumed run draws exactly what the uninterrupted run would have.
fn micro_seed(seed: u64, step: i64, micro: usize, rank: usize) -> i64 {
    let mut s = seed
        ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (micro as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ (rank as u64).wrapping_mul(0x1656_67B1_9E37_79F9);
    (data::splitmix64(&mut s) >> 1) as i64
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// The generation defaults written next to every saved model.
pub fn generation_config(config: &Config) -> GenerationConfig {
    GenerationConfig::from_model_config(config)
}

struct Loop<'a> {
    s: Session<'a>,
    model: Model,
    vs: nn::VarStore,
    opt: AdamW,
    loader: Loader,
    eval: Vec<MicroBatch>,
    state: TrainerState,
    progress: TrainingProgress,
    losses: Vec<f64>,
    log: Option<std::fs::File>,
    started: Instant,
    started_step: i64,
}

/// Trains from the newest checkpoint (or from scratch) to the planned step.
pub fn train(s: Session<'_>) -> Result<Trained, PretrainError> {
    let plan = s.plan;
    let rank = s.collective.rank();
    let world = s.collective.world_size();
    tch::manual_seed(plan.seed as i64);
    let mut vs = nn::VarStore::new(s.device);
    let model = Model::new(&vs.root(), &plan.model)?;
    // bf16 on a GPU: the model computes in bf16, AdamW keeps fp32 masters and
    // moments, and the loss is taken in fp32. CPUs train in fp32 (bf16 matmuls
    // there are slower, not faster).
    if plan.precision == Precision::Bf16 && s.device.is_cuda() {
        vs.bfloat16();
    }
    let opt = AdamW::new(&vs, plan.adamw)?;
    let dataset_uri = s.dataset.dir().display().to_string();
    let dataset_err = |e| PretrainError::dataset(&dataset_uri)(e);
    let train_split = s.dataset.split("train").map_err(dataset_err)?;
    if train_split.is_empty() {
        return Err(PretrainError::Incompatible(
            "the train split is empty".into(),
        ));
    }
    let validation = s.dataset.split("validation").map_err(dataset_err)?;
    let eval = if rank == 0 {
        data::eval_batches(
            &validation,
            plan.sequence_length,
            plan.micro_batch,
            MAX_EVAL_ROWS,
            s.device,
        )
        .map_err(dataset_err)?
    } else {
        Vec::new()
    };
    let loader = Loader::new(
        train_split,
        plan.sequence_length,
        plan.seed,
        plan.batch,
        plan.micro_batch,
        rank,
        world,
        s.device,
    );
    let state = TrainerState {
        step: 0,
        tokens_seen: 0,
        cursor: loader.cursor(),
        seed: plan.seed,
        world_size: world,
        dataset_digest: s.dataset.manifest.digest.clone(),
        train_loss: None,
        validation_loss: None,
        time: String::new(),
    };
    let progress = TrainingProgress {
        total_steps: plan.total_steps,
        ..Default::default()
    };
    let mut l = Loop {
        s,
        model,
        vs,
        opt,
        loader,
        eval,
        state,
        progress,
        losses: Vec::new(),
        log: None,
        started: Instant::now(),
        started_step: 0,
    };
    l.resume()?;
    l.sync_initial_weights()?;
    l.open_log()?;
    l.run()
}

impl Loop<'_> {
    fn rank(&self) -> usize {
        self.s.collective.rank()
    }

    /// Continues from the newest complete checkpoint, if any.
    fn resume(&mut self) -> Result<(), PretrainError> {
        if let Some(mirror) = &self.s.mirror {
            let local = self.s.checkpoints.list()?.last().map(|(step, _)| *step);
            if let Some(step) =
                mirror.download_newest(self.s.checkpoints.root(), local, TRAIN_LOG)?
            {
                tracing::info!(step, "downloaded the newest checkpoint");
            }
        }
        let Some((state, dir)) = self.s.checkpoints.newest()? else {
            return Ok(());
        };
        let foreign = |reason: String| PretrainError::ForeignCheckpoint {
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
            return Err(foreign(format!(
                "its model differs from spec.model in {}",
                differences.join(", ")
            )));
        }
        io::load_weights(&self.vs, &self.s.plan.model, &dir)?;
        self.opt
            .load(&dir.join(OPTIMIZER_FILE), state.step)
            .map_err(foreign)?;
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
        Ok(())
    }

    fn checkpoint_info(&self, step: i64, time: &str) -> CheckpointInfo {
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
    fn sync_initial_weights(&mut self) -> Result<(), PretrainError> {
        if self.s.collective.world_size() == 1 {
            return Ok(());
        }
        let params: Vec<Tensor> = self.opt.parameters().map(Tensor::shallow_clone).collect();
        let mut flat = flatten(&params)?;
        self.s.collective.broadcast(&mut flat)?;
        unflatten(&flat, &params)?;
        Ok(())
    }

    /// The per-step log of rank 0, cut back to the resumed step so that it always
    /// describes one consistent run.
    fn open_log(&mut self) -> Result<(), PretrainError> {
        if self.rank() != 0 {
            return Ok(());
        }
        let root = self.s.checkpoints.root();
        std::fs::create_dir_all(root)
            .map_err(PretrainError::io(format!("create {}", root.display())))?;
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
        std::fs::write(&path, kept)
            .map_err(PretrainError::io(format!("write {}", path.display())))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(PretrainError::io(format!("open {}", path.display())))?;
        self.log = Some(file);
        Ok(())
    }

    fn run(mut self) -> Result<Trained, PretrainError> {
        let plan = self.s.plan;
        let world = self.s.collective.world_size();
        let rank = self.rank();
        let params: Vec<Tensor> = self.opt.parameters().map(Tensor::shallow_clone).collect();
        let mut interrupted = false;
        self.started = Instant::now();
        while self.state.step < plan.total_steps {
            let step = self.state.step;
            let lr = plan.schedule.lr(step);
            let cursor_before = self.loader.cursor();
            let batch = self.loader.next_step().map_err(PretrainError::dataset(
                self.s.dataset.dir().display().to_string(),
            ))?;
            // Each rank's loss is scaled so that the mean over ranks of the summed
            // micro-batch gradients is the gradient of the global batch's mean loss.
            let scale = world as f64 / batch.global_targets.max(1) as f64;
            self.opt.zero_grad();
            let mut local_sum = 0.0;
            let mut stopped_mid_step = false;
            for (i, mb) in batch.micro_batches.iter().enumerate() {
                tch::manual_seed(micro_seed(plan.seed, step, i, rank));
                let logits = self.model.forward_t(&mb.inputs, true)?;
                let loss = summed_loss(&logits, &mb.targets)?;
                loss.f_mul_scalar(scale)?.backward();
                local_sum += loss.f_double_value(&[])?;
                if world == 1 && self.s.interrupt.requested() && i + 1 < batch.micro_batches.len() {
                    stopped_mid_step = true;
                    break;
                }
            }
            if stopped_mid_step {
                // The half-accumulated step is dropped; the checkpoint is the last
                // completed step, and a restart redoes this one from its batch.
                self.loader.seek(cursor_before);
                self.opt.zero_grad();
                interrupted = true;
                break;
            }
            let (loss, stop) = if world == 1 {
                (
                    local_sum / batch.global_targets.max(1) as f64,
                    self.s.interrupt.requested(),
                )
            } else {
                let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
                let mut flat = flatten(&grads)?;
                let n = flat.len();
                flat.push(local_sum as f32);
                flat.push(if self.s.interrupt.requested() {
                    1.0
                } else {
                    0.0
                });
                self.s.collective.all_reduce_mean(&mut flat)?;
                unflatten(&flat[..n], &grads)?;
                (
                    flat[n] as f64 * world as f64 / batch.global_targets.max(1) as f64,
                    flat[n + 1] > 0.0,
                )
            };
            if !loss.is_finite() {
                return Err(PretrainError::Diverged {
                    step: step + 1,
                    loss,
                });
            }
            let grad_norm = self.opt.clip_grad_norm(plan.grad_clip)?;
            self.opt.update(lr)?;
            self.state.step += 1;
            self.state.tokens_seen += plan.tokens_per_step();
            self.state.cursor = self.loader.cursor();
            self.state.train_loss = Some(loss);
            self.after_step(loss, lr, grad_norm)?;
            if stop {
                interrupted = true;
                break;
            }
        }
        if interrupted {
            self.checkpoint_now()?;
        }
        self.s.collective.barrier()?;
        Ok(Trained {
            vs: self.vs,
            model: self.model,
            state: self.state,
            progress: self.progress,
            interrupted,
        })
    }

    /// Logging, evaluation, periodic checkpoints and progress after an update.
    fn after_step(&mut self, loss: f64, lr: f64, grad_norm: f64) -> Result<(), PretrainError> {
        let plan = self.s.plan;
        let step = self.state.step;
        let mut validation = None;
        if self.rank() == 0 && (step % plan.eval_every == 0 || step == plan.total_steps) {
            validation = evaluate(&self.model, &self.eval)?;
            if validation.is_some() {
                self.state.validation_loss = validation;
            }
        }
        if let Some(log) = &mut self.log {
            let mut line = serde_json::json!({
                "step": step, "loss": loss, "lr": lr, "gradNorm": grad_norm,
                "tokensSeen": self.state.tokens_seen,
            });
            if let Some(v) = validation {
                line["validationLoss"] = v.into();
            }
            writeln!(log, "{line}").map_err(PretrainError::io("append to the training log"))?;
        }
        // The last step too: a restart after training (e.g. a failed upload) then
        // only exports.
        if step % plan.checkpoint_every == 0 || step == plan.total_steps {
            self.checkpoint_now()?;
        }
        self.losses.push(loss);
        if self.losses.len() > LOSS_WINDOW {
            self.losses.remove(0);
        }
        self.report(lr);
        Ok(())
    }

    /// Saves the current state (rank 0 writes; every rank waits for it).
    fn checkpoint_now(&mut self) -> Result<(), PretrainError> {
        if self.rank() == 0 {
            self.state.time = k8s_openapi::jiff::Timestamp::now().to_string();
            let (vs, model, opt) = (&self.vs, &self.model, &self.opt);
            let generation = generation_config(model.config());
            let dir = self
                .s
                .checkpoints
                .save(&self.state, |dir| -> Result<(), String> {
                    io::save(dir, vs, model, &generation).map_err(|e| e.to_string())?;
                    opt.save(&dir.join(OPTIMIZER_FILE))
                        .map_err(|e| e.to_string())
                })?;
            if let Some(mirror) = &self.s.mirror {
                let kept: Vec<i64> = self
                    .s
                    .checkpoints
                    .list()?
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect();
                let log = self.s.checkpoints.root().join(TRAIN_LOG);
                mirror.upload(&dir, &log, &kept)?;
            }
            self.progress.last_checkpoint =
                Some(self.checkpoint_info(self.state.step, &self.state.time));
            tracing::info!(step = self.state.step, "checkpoint saved");
        }
        self.s.collective.barrier()?;
        Ok(())
    }

    fn report(&mut self, lr: f64) {
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

/// Where checkpoints of a local output live.
pub fn checkpoint_dir(output_root: &std::path::Path) -> PathBuf {
    output_root.join("checkpoints")
}
