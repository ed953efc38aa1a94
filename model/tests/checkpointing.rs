//! Activation checkpointing (`Model::checkpointed_backward`): the gradients of
//! a plain backward pass, dropout masks drawn alike in the forward pass and the
//! recomputation, and frozen parts left without gradients.

mod common;

use common::{max_abs_diff, tiny_config, tiny_model_with};
use llmops_model::{Config, Family, Model};
use tch::{Kind, Tensor, nn};

/// libtorch's random generator is one per process, and the tests here seed it:
/// they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn next_token_loss(logits: &Tensor, tokens: &Tensor) -> Tensor {
    let (b, s, v) = logits.size3().unwrap();
    let inputs = logits.narrow(1, 0, s - 1).reshape([b * (s - 1), v]);
    let targets = tokens.narrow(1, 1, s - 1).reshape([b * (s - 1)]);
    inputs.cross_entropy_for_logits(&targets)
}

fn tokens() -> Tensor {
    Tensor::from_slice(&[5i64, 6, 7, 8, 9, 10, 11, 12, 3, 1, 4, 1, 5, 9, 2, 6]).reshape([2, 8])
}

fn without_dropout(family: Family) -> Config {
    let mut config = tiny_config(family, false);
    config.embd_dropout = 0.0;
    config.attn_dropout = 0.0;
    config.resid_dropout = 0.0;
    config
}

/// Each trainable variable's gradient (copied), by name; zeroes them.
fn take_grads(vs: &nn::VarStore) -> Vec<(String, Option<Tensor>)> {
    let mut out: Vec<(String, Option<Tensor>)> = vs
        .variables()
        .into_iter()
        .map(|(name, var)| {
            let grad = var.grad();
            let taken = grad.defined().then(|| grad.copy());
            if grad.defined() {
                let _ = grad.shallow_clone().zero_();
            }
            (name, taken)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn checkpointed(model: &Model, tokens: &Tensor, seed: i64) -> Tensor {
    model
        .checkpointed_backward(tokens, seed, |logits| Ok(next_token_loss(logits, tokens)))
        .unwrap()
}

#[test]
fn checkpointed_gradients_equal_a_plain_backward() {
    let _serial = serial();
    for (family, tied) in [
        (Family::Gpt2, true),
        (Family::Llama, false),
        (Family::Mistral, false),
    ] {
        let mut config = without_dropout(family);
        config.tie_word_embeddings = tied;
        let (vs, model) = tiny_model_with(&config, 3);
        let tokens = tokens();
        let plain = next_token_loss(&model.forward_t(&tokens, true).unwrap(), &tokens);
        plain.backward();
        let expected = take_grads(&vs);
        let loss = checkpointed(&model, &tokens, 17);
        let got = take_grads(&vs);
        assert!(
            (plain.double_value(&[]) - loss.double_value(&[])).abs() < 1e-6,
            "{family:?}: loss {} vs {}",
            plain.double_value(&[]),
            loss.double_value(&[])
        );
        let mut worst = 0.0f64;
        for ((name, a), (_, b)) in expected.iter().zip(&got) {
            let (Some(a), Some(b)) = (a, b) else {
                panic!("{family:?}: {name} has a gradient in only one of the passes");
            };
            let scale = 1.0 + a.abs().max().double_value(&[]);
            worst = worst.max(max_abs_diff(a, b) / scale);
        }
        println!("{family:?} (tied {tied}): max relative |Δgrad| {worst:.2e}");
        assert!(worst < 1e-5, "{family:?}: gradients differ by {worst}");
    }
}

/// With dropout on, the loss of a checkpointed step is a fixed function of the
/// weights for a fixed seed; its gradient must be that function's derivative,
/// which it is only if the recomputed blocks drew the masks the forward pass
/// drew. Checked along a random direction by central differences.
#[test]
fn the_recomputation_draws_the_dropout_masks_of_the_forward_pass() {
    let _serial = serial();
    let (vs, model) = tiny_model_with(&tiny_config(Family::Gpt2, true), 5);
    let tokens = tokens();
    let seed = 99;
    let loss = checkpointed(&model, &tokens, seed).double_value(&[]);
    let grads = take_grads(&vs);
    // Dropout is on: another seed gives another loss.
    let other = checkpointed(&model, &tokens, seed + 1).double_value(&[]);
    let _ = take_grads(&vs);
    assert!((loss - other).abs() > 1e-4, "dropout had no effect");
    // The same seed gives the same loss.
    let again = checkpointed(&model, &tokens, seed).double_value(&[]);
    let _ = take_grads(&vs);
    assert_eq!(loss, again);

    tch::manual_seed(1);
    let variables = vs.variables();
    let direction: Vec<(String, Tensor)> = grads
        .iter()
        .map(|(name, _)| {
            let var = &variables[name];
            (
                name.clone(),
                Tensor::randn(var.size(), (Kind::Float, var.device())),
            )
        })
        .collect();
    let slope: f64 = grads
        .iter()
        .zip(&direction)
        .map(|((_, g), (_, d))| {
            g.as_ref()
                .map_or(0.0, |g| (g * d).sum(Kind::Double).double_value(&[]))
        })
        .sum();
    let eps = 1e-3;
    let shift = |by: f64| {
        tch::no_grad(|| {
            for (name, d) in &direction {
                let _ = variables[name].shallow_clone().f_add_(&(d * by)).unwrap();
            }
        })
    };
    shift(eps);
    let up = checkpointed(&model, &tokens, seed).double_value(&[]);
    shift(-2.0 * eps);
    let down = checkpointed(&model, &tokens, seed).double_value(&[]);
    shift(eps);
    let numeric = (up - down) / (2.0 * eps);
    let relative = (numeric - slope).abs() / slope.abs().max(1e-3);
    println!(
        "directional derivative: autograd {slope:.5}, central differences {numeric:.5} (relative {relative:.1e})"
    );
    assert!(
        relative < 0.02,
        "the gradient is not the derivative of the checkpointed loss: {slope} vs {numeric}"
    );
}

#[test]
fn frozen_parts_get_no_gradient_and_the_trained_ones_the_plain_one() {
    let _serial = serial();
    let (vs, model) = tiny_model_with(&without_dropout(Family::Llama), 4);
    // Only the second block's MLP is trained, as an adapter run trains a few
    // projections of a frozen base.
    for (name, var) in vs.variables() {
        let _ = var.set_requires_grad(name.starts_with("model.layers.1.mlp."));
    }
    let tokens = tokens();
    next_token_loss(&model.forward_t(&tokens, true).unwrap(), &tokens).backward();
    let expected = take_grads(&vs);
    let _ = checkpointed(&model, &tokens, 3);
    let got = take_grads(&vs);
    for ((name, a), (_, b)) in expected.iter().zip(&got) {
        match (a, b) {
            (None, None) => assert!(!name.starts_with("model.layers.1.mlp."), "{name}"),
            (Some(a), Some(b)) => assert!(max_abs_diff(a, b) < 1e-5, "{name}"),
            _ => panic!("{name} has a gradient in only one of the passes"),
        }
    }
}
