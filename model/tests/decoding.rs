//! Inference paths agree with the plain full forward pass: cached incremental decoding,
//! padded batches, cache surgery for continuous batching, and generation.

mod common;

use std::ops::ControlFlow;

use common::{ids, max_abs_diff, tiny_model};
use llmops_model::{Error, Family, FinishReason, LogitsProcessor, Model, Sampling, generate};
use tch::{Kind, Tensor};

const TOL: f64 = 1e-4;
const FAMILIES: [Family; 2] = [Family::Gpt2, Family::Llama];

fn full(model: &Model, tokens: &[i64]) -> Tensor {
    tch::no_grad(|| model.forward_t(&ids(tokens), false)).unwrap()
}

#[test]
fn cached_incremental_decoding_matches_full_forward() {
    let tokens: Vec<i64> = (0..20).map(|i| (i * 37 + 5) % 101).collect();
    for family in FAMILIES {
        let (_vs, model) = tiny_model(family, family == Family::Gpt2, 1);
        let want = full(&model, &tokens);
        // Chunks of different sizes exercise the causal mask with a cache offset.
        let mut cache = model.new_cache();
        let mut parts = Vec::new();
        for chunk in [&tokens[..7], &tokens[7..8], &tokens[8..12], &tokens[12..]] {
            if chunk.len() > 4 {
                for &t in chunk {
                    parts.push(model.forward(&ids(&[t]), &mut cache).unwrap());
                }
            } else {
                parts.push(model.forward(&ids(chunk), &mut cache).unwrap());
            }
        }
        let diff = max_abs_diff(&Tensor::cat(&parts, 1), &want);
        println!("{family:?}: cached vs full max |Δlogit| = {diff:.2e}");
        assert!(diff < TOL, "{family:?}: cached decoding differs by {diff}");
        assert_eq!(cache.lengths().unwrap(), vec![tokens.len() as i64]);

        cache.clear();
        assert!(cache.is_empty());
        let again = model.forward(&ids(&tokens[..3]), &mut cache).unwrap();
        assert!(max_abs_diff(&again, &want.narrow(1, 0, 3)) < TOL);
    }
}

/// Two prompts of different lengths, left-padded into one batch, then decoded
/// together: each row must equal decoding that sequence alone.
#[test]
fn padded_batch_decoding_matches_single_sequences() {
    let a: Vec<i64> = vec![5, 9, 13, 2, 77, 40, 8];
    let b: Vec<i64> = vec![60, 3, 91];
    let next_a = [11i64, 12, 13];
    let next_b = [21i64, 22, 23];
    for family in FAMILIES {
        let (_vs, model) = tiny_model(family, false, 2);
        let pad = (a.len() - b.len()) as i64;
        let mut padded_b = vec![0; pad as usize];
        padded_b.extend(&b);
        let batch = Tensor::stack(&[Tensor::from_slice(&a), Tensor::from_slice(&padded_b)], 0);
        let mask = Tensor::stack(
            &[
                Tensor::ones([a.len() as i64], (Kind::Int64, tch::Device::Cpu)),
                Tensor::cat(
                    &[
                        Tensor::zeros([pad], (Kind::Int64, tch::Device::Cpu)),
                        Tensor::ones([b.len() as i64], (Kind::Int64, tch::Device::Cpu)),
                    ],
                    0,
                ),
            ],
            0,
        );
        let mut cache = model.new_cache();
        let prefill = model.forward_padded(&batch, &mask, &mut cache).unwrap();
        let mut other = model.new_cache();
        let last = model.forward_last(&batch, Some(&mask), &mut other).unwrap();
        assert_eq!(last.size(), [2, 101]);
        assert!(max_abs_diff(&last, &prefill.select(1, -1)) < TOL);
        assert_eq!(
            cache.lengths().unwrap(),
            vec![a.len() as i64, b.len() as i64]
        );

        let mut seq_a = a.clone();
        let mut seq_b = b.clone();
        let mut last_a = vec![prefill.get(0).narrow(0, a.len() as i64 - 1, 1)];
        let mut last_b = vec![prefill.get(1).narrow(0, a.len() as i64 - 1, 1)];
        let diff_prompt = max_abs_diff(
            &prefill.get(1).narrow(0, pad, b.len() as i64),
            &full(&model, &b).get(0),
        );
        assert!(
            diff_prompt < TOL,
            "{family:?}: padded prompt differs by {diff_prompt}"
        );
        for (&ta, &tb) in next_a.iter().zip(&next_b) {
            seq_a.push(ta);
            seq_b.push(tb);
            let step = model
                .forward(&Tensor::from_slice(&[ta, tb]).unsqueeze(1), &mut cache)
                .unwrap();
            last_a.push(step.get(0));
            last_b.push(step.get(1));
        }
        let want_a = full(&model, &seq_a).get(0).narrow(0, a.len() as i64 - 1, 4);
        let want_b = full(&model, &seq_b).get(0).narrow(0, b.len() as i64 - 1, 4);
        let da = max_abs_diff(&Tensor::cat(&last_a, 0), &want_a);
        let db = max_abs_diff(&Tensor::cat(&last_b, 0), &want_b);
        println!(
            "{family:?}: padded batch vs single max |Δlogit| = {:.2e}",
            da.max(db)
        );
        assert!(
            da < TOL && db < TOL,
            "{family:?}: batch rows differ ({da}, {db})"
        );
    }
}

/// A server adds and removes sequences between steps; results must not change.
#[test]
fn cache_append_and_retain_keep_sequences_intact() {
    for family in FAMILIES {
        let (_vs, model) = tiny_model(family, true, 4);
        let long: Vec<i64> = vec![4, 8, 15, 16, 23, 42];
        let short: Vec<i64> = vec![7, 70];
        let mut running = model.new_cache();
        let _ = model.forward(&ids(&long), &mut running).unwrap();
        let mut joining = model.new_cache();
        let _ = model.forward(&ids(&short), &mut joining).unwrap();
        running.append(joining).unwrap();
        assert_eq!(running.batch_size(), 2);
        assert_eq!(running.slots(), long.len() as i64);
        assert_eq!(running.lengths().unwrap(), vec![6, 2]);

        let step = model
            .forward(&Tensor::from_slice(&[9i64, 10]).unsqueeze(1), &mut running)
            .unwrap();
        let want_long = full(&model, &[long.as_slice(), &[9]].concat())
            .get(0)
            .get(-1);
        let want_short = full(&model, &[short.as_slice(), &[10]].concat())
            .get(0)
            .get(-1);
        assert!(max_abs_diff(&step.get(0).get(0), &want_long) < TOL);
        assert!(max_abs_diff(&step.get(1).get(0), &want_short) < TOL);

        // The long sequence finishes: its slots are released, the short one goes on.
        running.retain(&[1]).unwrap();
        assert_eq!(running.batch_size(), 1);
        assert_eq!(
            running.slots(),
            3,
            "{family:?}: leading padding should be trimmed"
        );
        let step = model.forward(&ids(&[11]), &mut running).unwrap();
        let want = full(&model, &[short.as_slice(), &[10, 11]].concat())
            .get(0)
            .get(-1);
        assert!(max_abs_diff(&step.get(0).get(0), &want) < TOL);

        assert!(running.retain(&[3]).is_err());
        running.retain(&[]).unwrap();
        assert!(running.is_empty());
    }
}

#[test]
fn generate_matches_a_naive_greedy_loop() {
    for family in FAMILIES {
        let (_vs, model) = tiny_model(family, false, 5);
        let prompt = [3i64, 1, 4, 1, 5, 9];
        let mut naive = prompt.to_vec();
        for _ in 0..8 {
            let logits = full(&model, &naive);
            naive.push(logits.get(0).get(-1).argmax(0, false).int64_value(&[]));
        }
        let mut sampler = LogitsProcessor::new(0, Sampling::Greedy);
        let mut streamed = Vec::new();
        let out = generate(&model, &prompt, 8, &[], &mut sampler, |t| {
            streamed.push(t);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(out.tokens, naive[prompt.len()..]);
        assert_eq!(out.tokens, streamed);
        assert_eq!(out.finish_reason, FinishReason::Length);

        // Stop tokens end generation without being returned; callbacks can stop too.
        let first = naive[prompt.len()];
        let out = generate(&model, &prompt, 8, &[first], &mut sampler, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(
            (out.tokens.len(), out.finish_reason),
            (0, FinishReason::StopToken)
        );
        let out = generate(&model, &prompt, 8, &[], &mut sampler, |_| {
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(
            (out.tokens.len(), out.finish_reason),
            (1, FinishReason::Stopped)
        );

        // Generation stops when the context window (64) is full instead of failing.
        let long: Vec<i64> = (0..60).map(|i| i % 101).collect();
        let out = generate(&model, &long, 100, &[], &mut sampler, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(
            (out.tokens.len(), out.finish_reason),
            (5, FinishReason::Length)
        );

        // Seeded sampling is reproducible.
        let sample = |seed| {
            let s = Sampling::Sample {
                temperature: 1.0,
                top_k: Some(20),
                top_p: Some(0.9),
            };
            let mut lp = LogitsProcessor::new(seed, s);
            generate(&model, &prompt, 6, &[], &mut lp, |_| {
                ControlFlow::Continue(())
            })
            .unwrap()
            .tokens
        };
        assert_eq!(sample(9), sample(9));
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (_vs, model) = tiny_model(Family::Llama, false, 6);
    let mut cache = model.new_cache();
    let err = model.forward(&ids(&[1, 101]), &mut cache).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    let err = model.forward(&ids(&[-1]), &mut cache).unwrap_err();
    assert!(err.to_string().contains("-1"), "{err}");
    let err = model
        .forward(&Tensor::from_slice(&[1i64, 2]), &mut cache)
        .unwrap_err();
    assert!(err.to_string().contains("[batch, seq]"), "{err}");
    let err = model
        .forward(&Tensor::from_slice(&[1.0f32]).unsqueeze(0), &mut cache)
        .unwrap_err();
    assert!(err.to_string().contains("integers"), "{err}");
    let long: Vec<i64> = vec![1; 65];
    let err = model.forward_t(&ids(&long), false).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ContextOverflow {
                needed: 65,
                max: 64
            }
        ),
        "{err}"
    );
    // A cache for one sequence cannot take two rows.
    let _ = model.forward(&ids(&[1, 2]), &mut cache).unwrap();
    let err = model
        .forward(&Tensor::from_slice(&[1i64, 2]).unsqueeze(1), &mut cache)
        .unwrap_err();
    assert!(err.to_string().contains("holds 1 sequences"), "{err}");
    // Filling the context through the cache is caught as well.
    let rest: Vec<i64> = vec![3; 62];
    let _ = model.forward(&ids(&rest), &mut cache).unwrap();
    let err = model.forward(&ids(&[4]), &mut cache).unwrap_err();
    assert!(
        matches!(err, Error::ContextOverflow { needed: 65, .. }),
        "{err}"
    );
    let mut other = llmops_model::KvCache::new(3);
    assert!(model.forward(&ids(&[1]), &mut other).is_err());
}
