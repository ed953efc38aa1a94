//! The model as a trainer uses it: autograd through `forward_t`, dropout only in
//! training, optimisers over the `VarStore`, and selective freezing.

mod common;

use common::{ids, max_abs_diff, tiny_model};
use llmops_model::Family;
use tch::nn::OptimizerConfig;
use tch::{Tensor, nn};

fn next_token_loss(logits: &Tensor, tokens: &Tensor) -> Tensor {
    let (b, s, v) = logits.size3().unwrap();
    let inputs = logits.narrow(1, 0, s - 1).reshape([b * (s - 1), v]);
    let targets = tokens.narrow(1, 1, s - 1).reshape([b * (s - 1)]);
    inputs.cross_entropy_for_logits(&targets)
}

#[test]
fn dropout_is_active_only_in_training() {
    let (_vs, model) = tiny_model(Family::Gpt2, true, 7);
    let x = ids(&[1, 2, 3, 4, 5, 6]);
    let eval_a = model.forward_t(&x, false).unwrap();
    let eval_b = model.forward_t(&x, false).unwrap();
    assert_eq!(max_abs_diff(&eval_a, &eval_b), 0.0);
    let train = model.forward_t(&x, true).unwrap();
    assert!(
        max_abs_diff(&train, &eval_a) > 1e-3,
        "dropout had no effect in training"
    );
}

#[test]
fn training_steps_reduce_the_loss() {
    for family in [Family::Gpt2, Family::Llama] {
        let (vs, model) = tiny_model(family, false, 8);
        let tokens = Tensor::from_slice(&[5i64, 6, 7, 8, 9, 10, 11, 12, 5, 6, 7, 8, 9, 10, 11, 12])
            .reshape([2, 8]);
        let mut opt = nn::AdamW::default().build(&vs, 3e-3).unwrap();
        let initial =
            next_token_loss(&model.forward_t(&tokens, false).unwrap(), &tokens).double_value(&[]);
        for _ in 0..30 {
            let loss = next_token_loss(&model.forward_t(&tokens, true).unwrap(), &tokens);
            opt.backward_step(&loss);
        }
        let fin =
            next_token_loss(&model.forward_t(&tokens, false).unwrap(), &tokens).double_value(&[]);
        println!("{family:?}: loss {initial:.3} -> {fin:.3}");
        assert!(
            fin < initial * 0.5,
            "{family:?}: loss did not drop ({initial} -> {fin})"
        );
        let grads_defined = vs.trainable_variables().iter().all(|v| v.grad().defined());
        assert!(grads_defined, "every parameter should receive a gradient");
    }
}

/// Freezing everything except chosen projections (the basis for adapter training)
/// leaves the frozen weights untouched.
#[test]
fn frozen_parameters_stay_fixed() {
    let (vs, mut model) = tiny_model(Family::Llama, false, 9);
    let names: Vec<String> = model.linears_mut().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"model.layers.1.self_attn.q_proj".to_string()));
    assert!(names.contains(&"model.layers.0.mlp.down_proj".to_string()));
    assert_eq!(names.len(), 2 * 7);

    for (_, var) in vs.variables() {
        let _ = var.set_requires_grad(false);
    }
    let trainable: Vec<Tensor> = model
        .linears_mut()
        .into_iter()
        .filter(|(name, _)| name.ends_with("v_proj"))
        .map(|(_, linear)| linear.weight.set_requires_grad(true))
        .collect();
    assert_eq!(trainable.len(), 2);
    let before: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let mut opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
    let tokens = ids(&[3, 4, 5, 6, 7]);
    let loss = next_token_loss(&model.forward_t(&tokens, true).unwrap(), &tokens);
    opt.backward_step(&loss);
    for (name, old) in before {
        let changed = max_abs_diff(&vs.variables()[&name], &old) > 0.0;
        assert_eq!(changed, name.ends_with("v_proj.weight"), "{name}");
    }
}
