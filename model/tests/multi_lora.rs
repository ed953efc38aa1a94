//! Adapters served unmerged: a batch whose rows go through the base model and
//! two different adapters, prefilled and decoded together, gives each row the
//! logits of its adapter merged into the base (fp32, within 1e-4).

mod common;

use std::path::Path;

use common::{max_abs_diff, tiny_model};
use llmops_model::{
    AdapterRoutes, Dtype, Family, GenerationConfig, KvCache, LoraSettings, Model, PeftAdapter, io,
    peft,
};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;
const PROMPTS: [[i64; 5]; 4] = [
    [0, 17, 42, 99, 3],
    [64, 8, 23, 100, 5],
    [77, 31, 2, 9, 10],
    [5, 6, 7, 8, 9],
];

/// Saves an adapter on the base in `base_dir` with B away from zero.
fn save_adapter(base_dir: &Path, dir: &Path, rank: i64, targets: &[&str], seed: i64) {
    let mut loaded = io::load(base_dir, Device::Cpu, Dtype::F32).unwrap();
    let settings = LoraSettings {
        rank,
        alpha: 2.0 * rank as f64 + 1.0,
        dropout: 0.0,
        targets: targets.iter().map(|t| t.to_string()).collect(),
    };
    loaded.model.add_lora(&loaded.vs, &settings).unwrap();
    tch::manual_seed(seed);
    tch::no_grad(|| {
        for (name, var) in loaded.vs.variables() {
            if name.ends_with("lora_B.weight") {
                var.shallow_clone()
                    .copy_(&(Tensor::randn(var.size(), (Kind::Float, Device::Cpu)) * 0.3));
            }
        }
    });
    peft::save_adapter(dir, &loaded.vs, &loaded.model, &settings, "base").unwrap();
}

/// The base with the adapter in `dir` merged in (none: the base alone).
fn merged(base_dir: &Path, adapter: Option<&Path>) -> Model {
    let mut loaded = io::load(base_dir, Device::Cpu, Dtype::F32).unwrap();
    if let Some(dir) = adapter {
        peft::load_adapter(dir, &mut loaded.model, &loaded.vs).unwrap();
        loaded.model.merge_lora().unwrap();
    }
    loaded.model
}

/// Last-position logits of `prompt` and of two greedy-fed steps after it.
fn run(model: &Model, rows: &[[i64; 5]], routes: &[Option<u32>]) -> Vec<Tensor> {
    let routes = AdapterRoutes::from_rows(routes, Device::Cpu).unwrap();
    let mut cache = KvCache::new(model.config().num_layers as usize);
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    let ids = Tensor::from_slice(&flat).view([rows.len() as i64, 5]);
    let mut out = vec![
        model
            .forward_last_routed(&ids, None, &mut cache, routes.as_ref())
            .unwrap(),
    ];
    for _ in 0..2 {
        let next = out.last().unwrap().argmax(-1, true);
        out.push(
            model
                .forward_last_routed(&next, None, &mut cache, routes.as_ref())
                .unwrap(),
        );
    }
    out
}

fn check(family: Family, first: &[&str], second: &[&str]) {
    let (vs, model) = tiny_model(family, false, 11);
    let base_dir = tempfile::tempdir().unwrap();
    io::save(
        base_dir.path(),
        &vs,
        &model,
        &GenerationConfig::from_model_config(model.config()),
    )
    .unwrap();
    let (a1, a2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    save_adapter(base_dir.path(), a1.path(), 4, first, 1);
    save_adapter(base_dir.path(), a2.path(), 2, second, 2);

    let mut served = merged(base_dir.path(), None);
    served
        .attach_adapter(1, &PeftAdapter::read(a1.path()).unwrap())
        .unwrap();
    served
        .attach_adapter(2, &PeftAdapter::read(a2.path()).unwrap())
        .unwrap();
    // Base, adapter 1, adapter 2, adapter 1 again: one group spans two rows
    // that are not next to each other.
    let routes = [None, Some(1), Some(2), Some(1)];
    let together = run(&served, &PROMPTS, &routes);

    let references = [
        merged(base_dir.path(), None),
        merged(base_dir.path(), Some(a1.path())),
        merged(base_dir.path(), Some(a2.path())),
    ];
    let (mut spread, mut worst) = (0.0f64, 0.0f64);
    for (row, route) in routes.iter().enumerate() {
        let reference = &references[route.map_or(0, |id| id as usize)];
        let alone = run(reference, &PROMPTS[row..=row], &[None]);
        for (step, (ours, theirs)) in together.iter().zip(&alone).enumerate() {
            let diff = max_abs_diff(&ours.get(row as i64).unsqueeze(0), theirs);
            worst = worst.max(diff);
            assert!(
                diff < TOL,
                "{family:?} row {row} ({route:?}) step {step}: |Δlogit| {diff}"
            );
        }
        let base_alone = run(&references[0], &PROMPTS[row..=row], &[None]);
        spread = spread.max(max_abs_diff(&base_alone[0], &alone[0]));
    }
    println!(
        "{family:?}: mixed batch vs merged, max |Δlogit| {worst:.2e}; adapters move logits by up to {spread:.2e}"
    );
    assert!(spread > 1e-2, "the adapters change nothing: {spread}");

    // Detached, adapter 1's rows are the base model's again.
    served.detach_adapter(1);
    let after = run(&served, &PROMPTS[1..=1], &[Some(1)]);
    let base = run(&references[0], &PROMPTS[1..=1], &[None]);
    assert!(max_abs_diff(&after[0], &base[0]) < TOL);
}

#[test]
fn llama_rows_of_different_adapters_decode_together_as_if_merged() {
    check(
        Family::Llama,
        &["q_proj", "v_proj"],
        &["o_proj", "gate_proj", "down_proj"],
    );
}

#[test]
fn gpt2_conv1d_rows_of_different_adapters_decode_together_as_if_merged() {
    check(Family::Gpt2, &["c_attn"], &["c_proj", "c_fc"]);
}

#[test]
fn an_adapter_for_another_model_is_refused_and_leaves_the_model_as_it_was() {
    let (vs, model) = tiny_model(Family::Llama, false, 3);
    let base_dir = tempfile::tempdir().unwrap();
    io::save(
        base_dir.path(),
        &vs,
        &model,
        &GenerationConfig::from_model_config(model.config()),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(base_dir.path(), dir.path(), 4, &["q_proj"], 1);
    let adapter = PeftAdapter::read(dir.path()).unwrap();

    let mut other_config = model.config().clone();
    other_config.hidden_size = 32;
    let other_vs = tch::nn::VarStore::new(Device::Cpu);
    let mut other = Model::new(&other_vs.root(), &other_config).unwrap();
    let err = other.attach_adapter(1, &adapter).unwrap_err().to_string();
    assert!(err.contains("q_proj.lora_A.weight"), "{err}");

    let (_, mut gpt2) = tiny_model(Family::Gpt2, false, 3);
    let err = gpt2.attach_adapter(1, &adapter).unwrap_err().to_string();
    assert!(err.contains("model.layers.0.self_attn.q_proj"), "{err}");
    let served: usize = gpt2.linears_mut().iter().map(|(_, l)| l.served.len()).sum();
    assert_eq!(served, 0);
}
