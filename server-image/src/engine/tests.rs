//! Continuous batching must not change what a request gets: greedy answers of
//! requests decoded together (joining and leaving the batch at different
//! steps) equal single-sequence `generate` on the same model. Also: the bounded
//! queue and its gauges, and a diverged model failing instead of answering.

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

pub(crate) fn tiny_model() -> Model {
    model_with_context(128)
}

fn tiny_config(context: i64) -> Config {
    let mut config = Config::default_for(Family::Llama);
    config.vocab_size = VOCAB;
    config.hidden_size = 32;
    config.num_layers = 2;
    config.num_heads = 4;
    config.num_kv_heads = Some(2);
    config.intermediate_size = Some(64);
    config.max_position_embeddings = context;
    config
}

/// The tiny model's weights (the same for every context) with room for
/// `context` positions.
fn model_with_context(context: i64) -> Model {
    tch::manual_seed(7);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    Model::new(&vs.root(), &tiny_config(context)).unwrap()
}

/// Words `w0`..`w63`; decoding joins them with spaces.
pub(crate) fn tokenizer() -> Arc<Tokenizer> {
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

    let engine = Engine::start(
        model,
        tokenizer,
        Vec::new(),
        8,
        64,
        Arc::new(Metrics::new()),
    );
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

    let engine = Engine::start(
        model,
        tokenizer,
        Vec::new(),
        8,
        64,
        Arc::new(Metrics::new()),
    );
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

    let engine = Engine::start(model, tokenizer, vec![eos], 4, 64, Arc::new(Metrics::new()));
    let (r, mut rx) = request(&prompt, 20, &[]);
    engine.submit(r).unwrap();
    let (text, finish) = collect(&mut rx);
    assert_eq!(text, expected);
    assert_eq!(finish.reason, FinishReason::Stop);
    assert_eq!(finish.completion_tokens, k);
}

/// [`tiny_model`] with every weight NaN, as a diverged training run leaves it.
pub(crate) fn nan_model() -> Model {
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let model = Model::new(&vs.root(), &tiny_config(128)).unwrap();
    tch::no_grad(|| {
        for (_, mut weight) in vs.variables() {
            let _ = weight.fill_(f64::NAN);
        }
    });
    model
}

/// Polls `read` until it gives `want` (the engine thread updates gauges between
/// steps); panics after a few seconds.
fn eventually(what: &str, want: i64, read: impl Fn() -> i64) {
    let start = std::time::Instant::now();
    while read() != want {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{what} stayed {} (want {want})",
            read()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn non_finite_logits_fail_the_request_instead_of_answering() {
    let metrics = Arc::new(Metrics::new());
    let engine = Engine::start(nan_model(), tokenizer(), Vec::new(), 4, 8, metrics.clone());
    let (a, mut a_rx) = request(&[1, 2, 3], 5, &[]);
    let (b, mut b_rx) = request(&[4], 5, &[]);
    engine.submit_all(vec![a, b]).unwrap();
    for rx in [&mut a_rx, &mut b_rx] {
        match rx.blocking_recv().expect("an answer") {
            Event::Failed(message) => {
                assert!(message.contains("non-finite logits"), "{message}");
                assert!(message.contains(NON_FINITE_LOGITS), "{message}");
            }
            other => panic!("a diverged model must not answer: {other:?}"),
        }
        // Nothing after the failure: the sequence left the batch.
        assert_eq!(rx.blocking_recv(), None);
    }
    assert_eq!(metrics.generated_tokens.get(), 0);
    eventually("running sequences", 0, || metrics.running_sequences.get());
    assert_eq!(metrics.queue_depth.get(), 0);
}

#[test]
fn the_queue_is_bounded_all_or_none_and_counts_what_waits() {
    let metrics = Arc::new(Metrics::new());
    let (engine, mut submitted) = Engine::manual(3, metrics.clone());
    assert_eq!(engine.max_queue(), 3);
    let (a, _a_rx) = request(&[1], 4, &[]);
    let (b, _b_rx) = request(&[2], 4, &[]);
    engine.submit_all(vec![a, b]).unwrap();
    assert_eq!(metrics.queue_depth.get(), 2);
    // Two more do not fit: neither is queued.
    let (c, _c_rx) = request(&[3], 4, &[]);
    let (d, _d_rx) = request(&[4], 4, &[]);
    assert_eq!(
        engine.submit_all(vec![c, d]),
        Err(SubmitError::Overloaded { max_queue: 3 })
    );
    assert_eq!(metrics.queue_depth.get(), 2);
    let (e, _e_rx) = request(&[5], 4, &[]);
    engine.submit(e).unwrap();
    assert_eq!(metrics.queue_depth.get(), 3);
    let (f, _f_rx) = request(&[6], 4, &[]);
    assert!(matches!(
        engine.submit(f),
        Err(SubmitError::Overloaded { .. })
    ));
    let prompts: Vec<Vec<i64>> = std::iter::from_fn(|| submitted.try_recv().ok())
        .map(|r| r.prompt)
        .collect();
    assert_eq!(prompts, [vec![1], vec![2], vec![5]]);
    // Without the engine thread nobody takes them: a stopped engine says so.
    drop(submitted);
    let (g, _g_rx) = request(&[7], 4, &[]);
    let (engine, submitted) = Engine::manual(3, Arc::new(Metrics::new()));
    drop(submitted);
    assert_eq!(engine.submit(g), Err(SubmitError::Stopped));
}

#[test]
fn waiting_requests_count_until_they_decode_and_abandoned_ones_give_their_place_back() {
    const LONG: usize = 4000;
    let metrics = Arc::new(Metrics::new());
    let model = model_with_context(4096);
    let expected = reference(&model, &tokenizer(), &[3, 1, 4], 6);
    // One sequence at a time: the others wait in the queue.
    let engine = Engine::start(model, tokenizer(), Vec::new(), 1, 4, metrics.clone());
    let (long, mut long_rx) = request(&[1, 2, 3], LONG, &[]);
    engine.submit(long).unwrap();
    assert!(matches!(long_rx.blocking_recv(), Some(Event::Text(_))));
    let (gone, gone_rx) = request(&[5, 5], 10, &[]);
    let (next, mut next_rx) = request(&[3, 1, 4], 6, &[]);
    engine.submit_all(vec![gone, next]).unwrap();
    drop(gone_rx);
    // The abandoned one leaves the queue without running; the other waits
    // while the long one decodes.
    eventually("queue depth", 1, || metrics.queue_depth.get());
    assert_eq!(metrics.running_sequences.get(), 1);
    let cached = metrics.kv_cache_tokens.get();
    assert!(
        (3 + 1..=3 + LONG as i64).contains(&cached),
        "KV-cache tokens of the running sequence: {cached}"
    );
    // The client of the long one leaves: the waiting one takes its place.
    drop(long_rx);
    assert_eq!(collect(&mut next_rx).0, expected);
    eventually("queue depth", 0, || metrics.queue_depth.get());
    eventually("running sequences", 0, || metrics.running_sequences.get());
    eventually("KV-cache tokens", 0, || metrics.kv_cache_tokens.get());
    // One time-per-output-token observation per finished request of two or
    // more tokens (the abandoned long one did not finish).
    let rendered = metrics.render();
    assert!(
        rendered.contains("llmops_server_time_per_output_token_seconds_count 1\n"),
        "{rendered}"
    );
}
