//! Continuous batching must not change what a request gets: greedy answers of
//! requests decoded together (joining and leaving the batch at different
//! steps) equal single-sequence `generate` on the same model.

use std::ops::ControlFlow;
use std::sync::Arc;

use llmops_model::{Config, Family, LogitsProcessor, Model, Sampling, StopSequences, generate};
use tch::nn;
use tokenizers::Tokenizer;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokio::sync::mpsc;

use super::*;

const VOCAB: i64 = 64;

fn tiny_model() -> Model {
    let mut config = Config::default_for(Family::Llama);
    config.vocab_size = VOCAB;
    config.hidden_size = 32;
    config.num_layers = 2;
    config.num_heads = 4;
    config.num_kv_heads = Some(2);
    config.intermediate_size = Some(64);
    config.max_position_embeddings = 128;
    tch::manual_seed(7);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    Model::new(&vs.root(), &config).unwrap()
}

/// Words `w0`..`w63`; decoding joins them with spaces.
fn tokenizer() -> Arc<Tokenizer> {
    let model = WordLevel::builder()
        .vocab((0..VOCAB as u32).map(|i| (format!("w{i}"), i)).collect())
        .unk_token("w0".into())
        .build()
        .unwrap();
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(WhitespaceSplit));
    Arc::new(tokenizer)
}

fn reference(model: &Model, tokenizer: &Tokenizer, prompt: &[i64], max: usize) -> String {
    let mut sampler = LogitsProcessor::new(0, Sampling::Greedy);
    let out = generate(model, prompt, max, &[], &mut sampler, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let ids: Vec<u32> = out.tokens.iter().map(|&t| t as u32).collect();
    tokenizer.decode(&ids, true).unwrap()
}

fn request(prompt: &[i64], max: usize, stop: &[&str]) -> (Request, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let request = Request {
        prompt: prompt.to_vec(),
        max_new_tokens: max,
        sampling: Sampling::Greedy,
        seed: 0,
        stop: StopSequences::new(stop.iter().copied()),
        events: tx,
    };
    (request, rx)
}

/// The text and finish of one request.
fn collect(rx: &mut mpsc::UnboundedReceiver<Event>) -> (String, Finish) {
    let mut text = String::new();
    loop {
        match rx.blocking_recv().expect("the engine dropped the request") {
            Event::Text(t) => {
                assert!(!t.is_empty(), "empty text events are never sent");
                text.push_str(&t);
            }
            Event::Done(finish) => return (text, finish),
            Event::Failed(e) => panic!("generation failed: {e}"),
        }
    }
}

fn prompts() -> Vec<Vec<i64>> {
    vec![
        vec![1, 2, 3],
        vec![5; 17],
        vec![9, 8],
        (10..40).collect(),
        vec![42],
    ]
}

#[test]
fn batched_greedy_answers_equal_single_sequence_generation() {
    let model = tiny_model();
    let tokenizer = tokenizer();
    let maxes = [12, 5, 20, 9, 15];
    let expected: Vec<String> = prompts()
        .iter()
        .zip(maxes)
        .map(|(p, m)| reference(&model, &tokenizer, p, m))
        .collect();
    let late = reference(&model, &tokenizer, &[3, 1, 4, 1, 5], 10);

    let engine = Engine::start(model, tokenizer, Vec::new(), 8, Arc::new(Metrics::new()));
    let mut receivers = Vec::new();
    for (p, m) in prompts().iter().zip(maxes) {
        let (r, rx) = request(p, m, &[]);
        engine.submit(r).unwrap();
        receivers.push(rx);
    }
    // One more joins while the others are mid-answer.
    let first = receivers[0].blocking_recv().unwrap();
    let (r, mut late_rx) = request(&[3, 1, 4, 1, 5], 10, &[]);
    engine.submit(r).unwrap();

    let Event::Text(first) = first else {
        panic!("expected text first, got {first:?}")
    };
    let (rest, finish) = collect(&mut receivers[0]);
    assert_eq!(format!("{first}{rest}"), expected[0]);
    assert_eq!(finish.reason, FinishReason::Length);
    assert_eq!(finish.completion_tokens, 12);
    assert_eq!(finish.prompt_tokens, 3);
    for (i, rx) in receivers.iter_mut().enumerate().skip(1) {
        let (text, finish) = collect(rx);
        assert_eq!(text, expected[i], "request {i}");
        assert_eq!(finish.completion_tokens, maxes[i], "request {i}");
    }
    assert_eq!(collect(&mut late_rx).0, late);
}

#[test]
fn stop_strings_end_a_request_and_abandoned_ones_do_not_disturb_others() {
    let model = tiny_model();
    let tokenizer = tokenizer();
    let prompt = [1, 2, 3];
    let full = reference(&model, &tokenizer, &prompt, 12);
    let other = reference(&model, &tokenizer, &[7, 7], 12);
    // Stop at the fourth generated word: the answer is the text before it.
    let fourth = full.split(' ').nth(3).unwrap().to_string();
    let stop = format!(" {fourth}");
    let at = full.find(&stop).unwrap();

    let engine = Engine::start(model, tokenizer, Vec::new(), 8, Arc::new(Metrics::new()));
    let (abandoned, abandoned_rx) = request(&[4, 4, 4], 50, &[]);
    engine.submit(abandoned).unwrap();
    drop(abandoned_rx);
    let (r, mut rx) = request(&prompt, 12, &[&stop]);
    engine.submit(r).unwrap();
    let (o, mut other_rx) = request(&[7, 7], 12, &[]);
    engine.submit(o).unwrap();

    let (text, finish) = collect(&mut rx);
    assert_eq!(text, full[..at]);
    assert_eq!(finish.reason, FinishReason::Stop);
    assert_eq!(collect(&mut other_rx).0, other);
}

#[test]
fn an_end_of_sequence_token_finishes_with_stop() {
    let model = tiny_model();
    let tokenizer = tokenizer();
    // A prompt whose greedy answer has a token, after the first, that did not
    // occur before it: declared the end of sequence, the answer stops there.
    let (prompt, tokens, k) = prompts()
        .into_iter()
        .find_map(|prompt| {
            let mut sampler = LogitsProcessor::new(0, Sampling::Greedy);
            let out = generate(&model, &prompt, 20, &[], &mut sampler, |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
            let k = (1..out.tokens.len()).find(|&k| !out.tokens[..k].contains(&out.tokens[k]))?;
            Some((prompt, out.tokens, k))
        })
        .expect("some prompt's answer has two different tokens");
    let eos = tokens[k];
    let before: Vec<u32> = tokens[..k].iter().map(|&t| t as u32).collect();
    let expected = tokenizer.decode(&before, true).unwrap();

    let engine = Engine::start(model, tokenizer, vec![eos], 4, Arc::new(Metrics::new()));
    let (r, mut rx) = request(&prompt, 20, &[]);
    engine.submit(r).unwrap();
    let (text, finish) = collect(&mut rx);
    assert_eq!(text, expected);
    assert_eq!(finish.reason, FinishReason::Stop);
    assert_eq!(finish.completion_tokens, k);
}
