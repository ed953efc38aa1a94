//! Several LoRA adapters served on one base model at once, unmerged.
//!
//! Each adapter's `A` `[rank, in]` and `B` `[out, rank]` are attached to the
//! projections they adapt under a numeric id ([`Model::attach_adapter`]); the
//! base weights are never touched. A forward pass takes [`AdapterRoutes`]:
//! which rows of the batch belong to which adapter. Every adapted projection
//! then computes the base output for the whole batch and, for each adapter
//! present in the batch, adds `scale · x Aᵀ Bᵀ` to that adapter's rows only
//! (gathered with `index_select`, added back with `index_add`).
//!
//! Why gather/scatter per adapter rather than one batched `bmm` over per-row
//! `A`/`B` stacks: the work is two thin matmuls per adapter *present in the
//! batch* (not per row), nothing is copied per row, adapters of different
//! ranks and target sets need no padding to a common shape, and rows routed
//! nowhere cost nothing. A batch holds few distinct adapters in practice, so
//! the per-adapter kernel launches stay few.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::layers::ServedAdapter;
use crate::lora::LoraSettings;
use crate::model::Model;
use crate::peft::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};

/// Which rows of a batch go through which served adapter; rows not named go
/// through the base model alone.
#[derive(Debug)]
pub struct AdapterRoutes {
    /// (adapter id, row indices as int64 on the model's device), one entry per
    /// adapter present.
    groups: Vec<(u32, Tensor)>,
}

impl AdapterRoutes {
    /// Routes from each row's adapter (`None`: the base model). `None` when no
    /// row uses an adapter, so a base-only batch takes the plain path.
    pub fn from_rows(rows: &[Option<u32>], device: Device) -> Result<Option<Self>> {
        let mut by_adapter: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
        for (row, adapter) in rows.iter().enumerate() {
            if let Some(id) = adapter {
                by_adapter.entry(*id).or_default().push(row as i64);
            }
        }
        if by_adapter.is_empty() {
            return Ok(None);
        }
        let groups = by_adapter
            .into_iter()
            .map(|(id, rows)| Ok((id, Tensor::f_from_slice(&rows)?.f_to(device)?)))
            .collect::<Result<_>>()?;
        Ok(Some(AdapterRoutes { groups }))
    }

    /// (adapter id, row indices) for each adapter present.
    pub fn groups(&self) -> &[(u32, Tensor)] {
        &self.groups
    }
}

/// A PEFT LoRA adapter read from disk, not yet attached to a model: per
/// adapted projection (its full name, e.g. `model.layers.0.self_attn.q_proj`),
/// `A` and `B` in fp32 on the CPU.
#[derive(Debug)]
pub struct PeftAdapter {
    pub settings: LoraSettings,
    pub projections: BTreeMap<String, (Tensor, Tensor)>,
    /// Where it was read from, for errors.
    pub path: PathBuf,
}

impl PeftAdapter {
    /// Reads `adapter_config.json` and `adapter_model.safetensors` from `dir`.
    /// What this crate cannot compute (DoRA, rsLoRA, trained biases, extra
    /// saved modules) is refused naming the setting, as [`crate::peft`] does.
    pub fn read(dir: &Path) -> Result<Self> {
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: config_path.clone(),
            source,
        })?;
        let settings = crate::peft::settings_from(&config)?;
        if settings.rank < 1 {
            return Err(Error::InvalidConfig(format!(
                "{}: adapter r must be at least 1, got {}",
                config_path.display(),
                settings.rank
            )));
        }
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut halves: HashMap<String, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
        for (name, view) in tensors.iter() {
            let unexpected = || Error::UnexpectedTensor {
                name: name.to_owned(),
                path: path.clone(),
            };
            let ours = name
                .strip_prefix(crate::peft::PREFIX)
                .map(|n| n.replace(".default.", "."))
                .ok_or_else(unexpected)?;
            let (projection, is_a) = if let Some(p) = ours.strip_suffix(".lora_A.weight") {
                (p, true)
            } else if let Some(p) = ours.strip_suffix(".lora_B.weight") {
                (p, false)
            } else {
                return Err(unexpected());
            };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let kind = crate::io::tensor_kind(name, view.dtype(), &path)?;
            let tensor =
                Tensor::f_from_data_size(view.data(), &shape, kind)?.f_to_kind(Kind::Float)?;
            let entry = halves.entry(projection.to_string()).or_default();
            if is_a {
                entry.0 = Some(tensor);
            } else {
                entry.1 = Some(tensor);
            }
        }
        let mut projections = BTreeMap::new();
        for (projection, pair) in halves {
            let (Some(a), Some(b)) = pair else {
                return Err(Error::InvalidInput(format!(
                    "{} holds only one of lora_A and lora_B for {projection}",
                    path.display()
                )));
            };
            projections.insert(projection, (a, b));
        }
        if projections.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{} holds no adapter tensors",
                path.display()
            )));
        }
        Ok(PeftAdapter {
            settings,
            projections,
            path,
        })
    }
}

impl Model {
    /// Attaches `adapter` under `id` (replacing one attached under the same
    /// id), leaving the base weights as they are. Every projection its config
    /// targets must be in its weights with the shapes this model needs, and
    /// every projection in its weights must be one of this model's.
    pub fn attach_adapter(&mut self, id: u32, adapter: &PeftAdapter) -> Result<()> {
        let scale = adapter.settings.alpha / adapter.settings.rank as f64;
        let mut staged: Vec<(String, ServedAdapter)> = Vec::new();
        let mut names = Vec::new();
        for (name, linear) in self.linears_mut() {
            let short = name.rsplit('.').next().unwrap_or_default().to_string();
            let Some((a, b)) = adapter.projections.get(&name) else {
                if adapter.settings.targets.contains(&short) {
                    return Err(Error::InvalidInput(format!(
                        "{} has no tensors for {name}, which its target_modules name",
                        adapter.path.display()
                    )));
                }
                names.push(name);
                continue;
            };
            let (inputs, outputs) = (linear.in_features(), linear.out_features());
            let rank = a.size()[0];
            for (half, tensor, want) in [
                ("lora_A", a, [rank, inputs]),
                ("lora_B", b, [outputs, rank]),
            ] {
                if tensor.size() != want {
                    return Err(Error::ShapeMismatch {
                        name: format!("{name}.{half}.weight"),
                        expected: want.to_vec(),
                        found: tensor.size(),
                        path: adapter.path.clone(),
                    });
                }
            }
            let (device, kind) = (linear.weight.device(), linear.weight.kind());
            staged.push((
                name.clone(),
                ServedAdapter {
                    id,
                    a: a.f_to_kind(kind)?.f_to(device)?,
                    b: b.f_to_kind(kind)?.f_to(device)?,
                    scale,
                },
            ));
            names.push(name);
        }
        if let Some(stray) = adapter.projections.keys().find(|p| !names.contains(p)) {
            return Err(Error::InvalidInput(format!(
                "{} adapts {stray}, which this {:?} model does not have",
                adapter.path.display(),
                self.config().family
            )));
        }
        // Checked in full before anything changes: a bad adapter leaves the
        // model as it was.
        self.detach_adapter(id);
        let mut staged: HashMap<String, ServedAdapter> = staged.into_iter().collect();
        for (name, linear) in self.linears_mut() {
            if let Some(served) = staged.remove(&name) {
                linear.served.push(served);
            }
        }
        Ok(())
    }

    /// Removes the adapter attached under `id`, if any.
    pub fn detach_adapter(&mut self, id: u32) {
        for (_, linear) in self.linears_mut() {
            linear.served.retain(|s| s.id != id);
        }
    }
}
