//! Parity with `transformers`: checkpoints it writes load here with the same logits,
//! and checkpoints we write load there with the same logits (fp32, within 1e-4).

mod common;

use std::ops::ControlFlow;

use common::{ids, ids_arg, max_abs_diff, read_tensors, reference, tiny_config, tiny_model_with};
use llmops_model::{
    Dtype, Family, GenerationConfig, LogitsProcessor, Model, RopeScaling, Sampling, generate, io,
};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;
const PROMPT: &[i64] = &[0, 17, 42, 99, 3, 64, 8, 23, 100, 5, 77, 31];

fn family_arg(family: Family) -> &'static str {
    match family {
        Family::Gpt2 => "gpt2",
        Family::Llama => "llama",
        Family::Qwen2 => "qwen2",
        Family::Mistral => "mistral",
    }
}

/// Logits of `ids` fed one chunk at a time through a KV cache: a 5-token prefill,
/// then single tokens.
fn incremental_logits(model: &Model, tokens: &[i64]) -> Tensor {
    let mut cache = model.new_cache();
    let mut parts = vec![model.forward(&ids(&tokens[..5]), &mut cache).unwrap()];
    for &t in &tokens[5..] {
        parts.push(model.forward(&ids(&[t]), &mut cache).unwrap());
    }
    Tensor::cat(&parts, 1)
}

fn greedy(model: &Model, prompt: &[i64], n: usize) -> Vec<i64> {
    let mut sampler = LogitsProcessor::new(0, Sampling::Greedy);
    let stop = model.config().eos_token_id.clone();
    let generation = generate(model, prompt, n, &stop, &mut sampler, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    generation.tokens
}

/// HF's greedy output ends with the EOS token when it stopped there; ours does not
/// include the stop token.
fn strip_eos(mut tokens: Vec<i64>, eos: &[i64]) -> Vec<i64> {
    if tokens.last().is_some_and(|t| eos.contains(t)) {
        tokens.pop();
    }
    tokens
}

fn hf_checkpoint_matches(family: Family, tied: bool) {
    hf_checkpoint_matches_as(family_arg(family), family, tied);
}

/// The reference's `--family` (`llama3` is a Llama with RoPE scaling) loads here
/// as `family` with the same logits, cached or not, and greedy tokens.
fn hf_checkpoint_matches_as(variant: &str, family: Family, tied: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let tied_flag = if tied { "--tied" } else { "--untied" };
    reference(&[
        "create",
        "--family",
        variant,
        "--out",
        dir.path().to_str().unwrap(),
        "--seed",
        "3",
        tied_flag,
        "--ids",
        &ids_arg(PROMPT),
        "--generate",
        "10",
    ]);
    let expected = read_tensors(&dir.path().join("reference.safetensors"));
    let loaded = io::load(dir.path(), Device::Cpu, Dtype::F32).unwrap();
    let model = &loaded.model;
    assert_eq!(model.config().family, family);
    assert_eq!(model.config().tie_word_embeddings, tied);
    let has_lm_head = loaded.vs.variables().contains_key("lm_head.weight");
    assert_eq!(
        has_lm_head, !tied,
        "lm_head is a separate parameter only when untied"
    );

    let want = &expected["logits"];
    let full = tch::no_grad(|| model.forward_t(&ids(PROMPT), false)).unwrap();
    let diff = max_abs_diff(&full, want);
    println!("{family:?} tied={tied}: HF checkpoint, full forward max |Δlogit| = {diff:.2e}");
    assert!(
        diff < TOL,
        "full forward differs from transformers by {diff}"
    );

    let cached = incremental_logits(model, PROMPT);
    let diff = max_abs_diff(&cached, want);
    println!("{family:?} tied={tied}: HF checkpoint, cached decoding max |Δlogit| = {diff:.2e}");
    assert!(
        diff < TOL,
        "cached decoding differs from transformers by {diff}"
    );

    let hf_greedy = Vec::<i64>::try_from(&expected["greedy"]).unwrap();
    let eos = &model.config().eos_token_id;
    let ours = greedy(model, PROMPT, 10);
    assert_eq!(ours, strip_eos(hf_greedy, eos), "greedy generation differs");

    // Sensitivity: a small change to one weight must break the tolerance, so the
    // comparison above cannot pass by accident.
    let name = match family {
        Family::Gpt2 => "transformer.h.1.ln_1.weight",
        _ => "model.layers.1.input_layernorm.weight",
    };
    let var = &loaded.vs.variables()[name];
    tch::no_grad(|| {
        let _ = var.get(7).shallow_clone().f_add_scalar_(1e-2).unwrap();
    });
    let perturbed = tch::no_grad(|| model.forward_t(&ids(PROMPT), false)).unwrap();
    let diff = max_abs_diff(&perturbed, want);
    assert!(diff > TOL, "a perturbed weight went unnoticed (Δ = {diff})");
    dir
}

/// The same checkpoint read as a plain Llama (its `config.json` edited) gives
/// different logits: what makes the family different shows in the comparison.
fn differs_as_plain_llama(dir: &std::path::Path, edit: impl Fn(&mut serde_json::Value)) {
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let plain = io::load(dir, Device::Cpu, Dtype::F32).unwrap();
    let want = &read_tensors(&dir.join("reference.safetensors"))["logits"];
    let logits = tch::no_grad(|| plain.model.forward_t(&ids(PROMPT), false)).unwrap();
    let diff = max_abs_diff(&logits, want);
    assert!(
        diff > TOL,
        "the family's difference went unnoticed (Δ = {diff})"
    );
}

#[test]
fn llama3_rope_scaling_hf_checkpoint_matches_transformers() {
    let dir = hf_checkpoint_matches_as("llama3", Family::Llama, false);
    differs_as_plain_llama(dir.path(), |c| {
        c["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 500.0});
    });
}

#[test]
fn qwen2_hf_checkpoint_matches_transformers() {
    hf_checkpoint_matches_as("qwen2", Family::Qwen2, true);
    let dir = hf_checkpoint_matches_as("qwen2", Family::Qwen2, false);
    // Read as Llama, the q/k/v biases are not loaded: a load error, not a silent
    // difference.
    let config_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["model_type"] = "llama".into();
    for key in [
        "use_sliding_window",
        "sliding_window",
        "max_window_layers",
        "layer_types",
    ] {
        config.as_object_mut().unwrap().remove(key);
    }
    std::fs::write(&config_path, config.to_string()).unwrap();
    assert!(io::load(dir.path(), Device::Cpu, Dtype::F32).is_err());
}

#[test]
fn mistral_sliding_window_hf_checkpoint_matches_transformers() {
    hf_checkpoint_matches_as("mistral", Family::Mistral, true);
    let dir = hf_checkpoint_matches_as("mistral", Family::Mistral, false);
    differs_as_plain_llama(dir.path(), |c| {
        c["sliding_window"] = serde_json::Value::Null;
    });
}

#[test]
fn gpt2_tied_hf_checkpoint_matches_transformers() {
    hf_checkpoint_matches(Family::Gpt2, true);
}

#[test]
fn gpt2_untied_hf_checkpoint_matches_transformers() {
    hf_checkpoint_matches(Family::Gpt2, false);
}

#[test]
fn llama_gqa_untied_hf_checkpoint_matches_transformers() {
    hf_checkpoint_matches(Family::Llama, false);
}

#[test]
fn llama_gqa_tied_hf_checkpoint_matches_transformers() {
    hf_checkpoint_matches(Family::Llama, true);
}

fn our_checkpoint_matches(family: Family, tied: bool) {
    our_config_matches(&tiny_config(family, tied));
}

fn our_config_matches(config: &llmops_model::Config) {
    let (family, tied) = (config.family, config.tie_word_embeddings);
    let (vs, model) = tiny_model_with(config, 11);
    let dir = tempfile::tempdir().unwrap();
    let generation = GenerationConfig::from_model_config(model.config());
    io::save(dir.path(), &vs, &model, &generation).unwrap();
    let names = read_tensors(&dir.path().join(io::WEIGHTS_FILE));
    assert_eq!(names.contains_key("lm_head.weight"), !tied);

    let out = dir.path().join("hf.safetensors");
    reference(&[
        "logits",
        "--model",
        dir.path().to_str().unwrap(),
        "--ids",
        &ids_arg(PROMPT),
        "--out",
        out.to_str().unwrap(),
        "--generate",
        "10",
    ]);
    let expected = read_tensors(&out);
    let ours = tch::no_grad(|| model.forward_t(&ids(PROMPT), false)).unwrap();
    let diff = max_abs_diff(&ours, &expected["logits"]);
    println!("{family:?} tied={tied}: our checkpoint in transformers, max |Δlogit| = {diff:.2e}");
    assert!(
        diff < TOL,
        "transformers computes different logits for our checkpoint: {diff}"
    );
    let hf_greedy = Vec::<i64>::try_from(&expected["greedy"]).unwrap();
    let eos = &model.config().eos_token_id;
    assert_eq!(greedy(&model, PROMPT, 10), strip_eos(hf_greedy, eos));

    // And the saved directory loads back here bit for bit.
    let reloaded = io::load(dir.path(), Device::Cpu, Dtype::F32).unwrap();
    let again = tch::no_grad(|| reloaded.model.forward_t(&ids(PROMPT), false)).unwrap();
    assert_eq!(max_abs_diff(&again, &ours), 0.0);
    assert_eq!(reloaded.generation_config, generation);
}

#[test]
fn gpt2_checkpoint_we_save_loads_in_transformers() {
    our_checkpoint_matches(Family::Gpt2, true);
    our_checkpoint_matches(Family::Gpt2, false);
}

#[test]
fn qwen2_mistral_and_llama3_checkpoints_we_save_load_in_transformers() {
    our_checkpoint_matches(Family::Qwen2, false);
    our_checkpoint_matches(Family::Mistral, true);
    let mut llama3 = tiny_config(Family::Llama, false);
    llama3.rope_scaling = Some(RopeScaling {
        factor: 4.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16,
    });
    our_config_matches(&llama3);
}

#[test]
fn llama_checkpoint_we_save_loads_in_transformers() {
    our_checkpoint_matches(Family::Llama, false);
    our_checkpoint_matches(Family::Llama, true);
}

#[test]
fn half_precision_checkpoints_load() {
    for dtype in ["bfloat16", "float16"] {
        let dir = tempfile::tempdir().unwrap();
        reference(&[
            "create",
            "--family",
            "llama",
            "--out",
            dir.path().to_str().unwrap(),
            "--dtype",
            dtype,
            "--ids",
            &ids_arg(PROMPT),
        ]);
        let want = &read_tensors(&dir.path().join("reference.safetensors"))["logits"];
        // Upcast on load: the same function as the fp32 reference of those weights.
        let f32_model = io::load(dir.path(), Device::Cpu, Dtype::F32).unwrap();
        assert_eq!(f32_model.model.embed_tokens.kind(), Kind::Float);
        let logits = tch::no_grad(|| f32_model.model.forward_t(&ids(PROMPT), false)).unwrap();
        let diff = max_abs_diff(&logits, want);
        println!("llama {dtype} checkpoint loaded as fp32: max |Δlogit| = {diff:.2e}");
        assert!(diff < TOL, "{dtype} checkpoint upcast differs by {diff}");

        // Kept in bf16: runs, and stays close to the fp32 result.
        let bf16 = io::load(dir.path(), Device::Cpu, Dtype::Bf16).unwrap();
        assert_eq!(bf16.model.embed_tokens.kind(), Kind::BFloat16);
        let logits = tch::no_grad(|| bf16.model.forward_t(&ids(PROMPT), false)).unwrap();
        assert_eq!(logits.kind(), Kind::BFloat16);
        let diff = max_abs_diff(&logits, want);
        let scale = want.abs().max().double_value(&[]);
        println!(
            "llama {dtype} checkpoint run in bf16: max |Δlogit| = {diff:.2e} (max |logit| {scale:.2})"
        );
        assert!(
            diff < 0.1 * scale,
            "bf16 forward is far off: {diff} vs scale {scale}"
        );
    }
}

#[test]
fn sharded_checkpoints_load() {
    let dir = tempfile::tempdir().unwrap();
    reference(&[
        "create",
        "--family",
        "gpt2",
        "--out",
        dir.path().to_str().unwrap(),
        "--shard-size",
        "40KB",
        "--ids",
        &ids_arg(PROMPT),
    ]);
    assert!(dir.path().join(io::WEIGHTS_INDEX_FILE).exists());
    assert!(!dir.path().join(io::WEIGHTS_FILE).exists());
    let want = &read_tensors(&dir.path().join("reference.safetensors"))["logits"];
    let loaded = io::load(dir.path(), Device::Cpu, Dtype::F32).unwrap();
    let logits = tch::no_grad(|| loaded.model.forward_t(&ids(PROMPT), false)).unwrap();
    let diff = max_abs_diff(&logits, want);
    let scale = want.abs().max().double_value(&[]);
    println!("gpt2 sharded checkpoint: max |Δlogit| = {diff:.2e} (max |logit| {scale:.2})");
    // Relative to the logits' size: two processes' CPU kernels round differently
    // (2e-4 seen under load on logits of a few units), while a shard loaded into
    // the wrong tensor or not at all is off by the logits' own size.
    assert!(diff < TOL * scale.max(1.0), "{diff} vs scale {scale}");
}
