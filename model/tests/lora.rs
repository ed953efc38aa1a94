//! Low-rank adapters: a fresh adapter changes nothing, only adapters train,
//! merging computes the same function, and a merged model saves and loads as a
//! plain Hugging Face model (adapters stay in checkpoints only).

mod common;

use common::{ids, max_abs_diff, tiny_model};
use llmops_model::{Dtype, Family, LoraSettings, io, lora};
use tch::{Device, Kind, Tensor};

fn settings(targets: &[&str]) -> LoraSettings {
    LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: targets.iter().map(|t| t.to_string()).collect(),
    }
}

/// Gives every adapter's B random values, as training would.
fn train_b(vs: &tch::nn::VarStore) {
    tch::no_grad(|| {
        for (name, var) in vs.variables() {
            if name.ends_with("lora_B.weight") {
                var.shallow_clone()
                    .copy_(&(Tensor::randn(var.size(), (Kind::Float, Device::Cpu)) * 0.1));
            }
        }
    });
}

#[test]
fn adapters_start_neutral_train_alone_and_merge_exactly() {
    for (family, targets) in [
        (Family::Llama, vec!["q_proj", "v_proj", "down_proj"]),
        (Family::Gpt2, vec!["c_attn", "c_fc"]),
    ] {
        let (vs, mut model) = tiny_model(family, true, 3);
        let x = ids(&[1, 5, 9, 2, 7]);
        let before = model.forward_t(&x, false).unwrap();
        let adapted = model.add_lora(&vs, &settings(&targets)).unwrap();
        assert_eq!(adapted.len(), 2 * targets.len(), "{family:?}: {adapted:?}");
        assert_eq!(
            max_abs_diff(&before, &model.forward_t(&x, false).unwrap()),
            0.0,
            "{family:?}: a fresh adapter changed the output"
        );
        for (name, var) in vs.variables() {
            assert_eq!(
                var.requires_grad(),
                lora::is_adapter(&name),
                "{family:?}: {name} trainable"
            );
        }

        train_b(&vs);
        let adapted_out = model.forward_t(&x, false).unwrap();
        assert!(max_abs_diff(&before, &adapted_out) > 1e-3, "{family:?}");
        model.merge_lora().unwrap();
        let merged_out = model.forward_t(&x, false).unwrap();
        // W·x + B·A·x and (W + B·A)·x round differently; 1e-4 is float noise at
        // these magnitudes and still ten times below the adapter's own effect
        // (> 1e-3 above), so a wrong merge cannot pass.
        let diff = max_abs_diff(&adapted_out, &merged_out);
        assert!(diff < 1e-4, "{family:?}: merged differs by {diff}");

        // The export has no adapter tensors and loads as a plain model.
        let dir = tempfile::tempdir().unwrap();
        io::save(dir.path(), &vs, &model, &Default::default()).unwrap();
        let loaded = io::load(dir.path(), Device::Cpu, Dtype::F32).unwrap();
        let diff = max_abs_diff(&merged_out, &loaded.model.forward_t(&x, false).unwrap());
        assert!(diff < 1e-6, "{family:?}: reloaded differs by {diff}");
    }
}

#[test]
fn checkpoints_keep_the_adapters() {
    let (vs, mut model) = tiny_model(Family::Llama, false, 4);
    model
        .add_lora(&vs, &settings(&["q_proj", "v_proj"]))
        .unwrap();
    train_b(&vs);
    let x = ids(&[3, 1, 4, 1, 5]);
    let out = model.forward_t(&x, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    io::save(dir.path(), &vs, &model, &Default::default()).unwrap();
    assert!(io::save_adapters(dir.path(), &vs).unwrap());

    // A fresh run of the same shape, adapters added, then the checkpoint loaded.
    let (vs2, mut model2) = tiny_model(Family::Llama, false, 99);
    model2
        .add_lora(&vs2, &settings(&["q_proj", "v_proj"]))
        .unwrap();
    io::load_weights(&vs2, model2.config(), dir.path()).unwrap();
    let diff = max_abs_diff(&out, &model2.forward_t(&x, false).unwrap());
    assert!(diff < 1e-6, "resumed adapters differ by {diff}");
}

#[test]
fn a_target_the_model_lacks_is_an_error() {
    let (vs, mut model) = tiny_model(Family::Gpt2, true, 5);
    let err = model.add_lora(&vs, &settings(&["q_proj"])).unwrap_err();
    assert!(err.to_string().contains("q_proj"), "{err}");
}
