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
        logprobs: Logprobs::default(),
        penalties: Penalties::default(),
        adapter: None,
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
            Event::Prompt(_) | Event::Token(_) => {}
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

/// The log-softmax of the full-sequence logits of `tokens`: row `t` scores the
/// token after position `t`.
fn reference_logprobs(model: &Model, tokens: &[i64]) -> Vec<Vec<f32>> {
    let ids = tch::Tensor::from_slice(tokens).view([1, tokens.len() as i64]);
    let logits = tch::no_grad(|| model.forward_t(&ids, false).unwrap());
    let logprobs = logits.log_softmax(-1, tch::Kind::Float).squeeze_dim(0);
    Vec::<Vec<f32>>::try_from(&logprobs).unwrap()
}

fn scored_request(
    prompt: &[i64],
    max: usize,
    top: usize,
) -> (Request, mpsc::UnboundedReceiver<Event>) {
    let (mut request, rx) = request(prompt, max, &[]);
    request.logprobs = Logprobs {
        generated: Some(top),
        prompt: Some(top),
    };
    (request, rx)
}

/// Every event of one request, up to its end.
fn events(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
    let mut all = Vec::new();
    loop {
        let event = rx.blocking_recv().expect("the engine dropped the request");
        let done = matches!(event, Event::Done(_) | Event::Failed(_));
        all.push(event);
        if done {
            return all;
        }
    }
}

fn assert_scored(what: &str, got: &TokenLogprob, row: &[f32], top: usize) {
    let want = row[got.token as usize];
    assert!(
        (got.logprob - want).abs() < 1e-4,
        "{what}: logprob {} vs {want}",
        got.logprob
    );
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    assert_eq!(got.top.len(), top, "{what}");
    for ((id, lp), want_id) in got.top.iter().zip(&order) {
        assert!((lp - row[*id as usize]).abs() < 1e-4, "{what}: top {id}");
        assert!(
            (row[*want_id] - row[*id as usize]).abs() < 1e-6,
            "{what}: top order"
        );
    }
}

#[test]
fn logprobs_of_prompt_and_generated_tokens_are_the_models_log_softmax() {
    let model = tiny_model();
    let tokenizer = tokenizer();
    let prompts: Vec<Vec<i64>> = vec![vec![1, 2, 3, 4, 5, 6], vec![9, 8], vec![42]];
    let expected: Vec<String> = prompts
        .iter()
        .map(|p| reference(&model, &tokenizer, p, 5))
        .collect();
    let plain = reference(&model, &tokenizer, &[7, 7, 7], 5);
    // The reference scores each prompt with its greedy answer (5 tokens).
    let mut answers = Vec::new();
    for p in &prompts {
        let mut sampler = LogitsProcessor::new(0, Sampling::Greedy);
        let out = generate(&model, p, 5, &[], &mut sampler, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        let mut all = p.clone();
        all.extend(&out.tokens);
        answers.push((all.clone(), reference_logprobs(&model, &all)));
    }

    let engine = Engine::start(
        model,
        tokenizer,
        Vec::new(),
        8,
        64,
        Arc::new(Metrics::new()),
    );
    // Scored and plain requests arrive together: both prefills join one batch.
    let mut receivers = Vec::new();
    let mut batch = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let (r, rx) = scored_request(p, 5, i + 1);
        batch.push(r);
        receivers.push(rx);
    }
    let (r, mut plain_rx) = request(&[7, 7, 7], 5, &[]);
    batch.push(r);
    engine.submit_all(batch).unwrap();

    for (i, rx) in receivers.iter_mut().enumerate() {
        let (all, logprobs) = &answers[i];
        let prompt_len = prompts[i].len();
        let events = events(rx);
        let Event::Prompt(scores) = &events[0] else {
            panic!("prompt scores first: {:?}", events[0]);
        };
        assert_eq!(scores.len(), prompt_len - 1);
        for (t, score) in scores.iter().enumerate() {
            assert_eq!(score.token, all[t + 1]);
            assert_scored(
                &format!("prompt {i} token {}", t + 1),
                score,
                &logprobs[t],
                i + 1,
            );
        }
        let generated: Vec<&TokenLogprob> = events
            .iter()
            .filter_map(|e| match e {
                Event::Token(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(generated.len(), 5);
        for (j, score) in generated.iter().enumerate() {
            let at = prompt_len + j;
            assert_eq!(score.token, all[at]);
            assert_scored(
                &format!("answer {i} token {j}"),
                score,
                &logprobs[at - 1],
                i + 1,
            );
        }
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                Event::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, expected[i]);
    }
    // The plain request hears no log-probabilities and gets its usual answer.
    let plain_events = events(&mut plain_rx);
    assert!(
        !plain_events
            .iter()
            .any(|e| matches!(e, Event::Prompt(_) | Event::Token(_)))
    );
    let text: String = plain_events
        .iter()
        .filter_map(|e| match e {
            Event::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, plain);
}

#[test]
fn no_new_tokens_scores_the_prompt_only() {
    let model = tiny_model();
    let logprobs = reference_logprobs(&model, &[3, 1, 4, 1, 5]);
    let engine = Engine::start(
        model,
        tokenizer(),
        Vec::new(),
        4,
        8,
        Arc::new(Metrics::new()),
    );
    let (r, mut rx) = scored_request(&[3, 1, 4, 1, 5], 0, 0);
    engine.submit(r).unwrap();
    let events = events(&mut rx);
    assert_eq!(events.len(), 2, "{events:?}");
    let Event::Prompt(scores) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(scores.len(), 4);
    for (t, s) in scores.iter().enumerate() {
        assert_scored(&format!("token {}", t + 1), s, &logprobs[t], 0);
    }
    assert_eq!(
        events[1],
        Event::Done(Finish {
            reason: FinishReason::Length,
            prompt_tokens: 5,
            completion_tokens: 0
        })
    );
}

#[test]
fn logit_bias_and_penalties_steer_sampling() {
    let model = tiny_model();
    let engine = Engine::start(
        model,
        tokenizer(),
        Vec::new(),
        4,
        8,
        Arc::new(Metrics::new()),
    );
    // A bias of 100 makes a token win every greedy step.
    let (mut r, mut rx) = request(&[1, 2, 3], 6, &[]);
    r.penalties.logit_bias = vec![(17, 100.0)];
    engine.submit(r).unwrap();
    assert_eq!(collect(&mut rx).0, ["w17"; 6].join(" "));
    // A bias of -100 keeps a token out: the greedy answer's first token changes.
    let (r, mut rx) = request(&[1, 2, 3], 1, &[]);
    engine.submit(r).unwrap();
    let first = collect(&mut rx).0;
    let id: usize = first.trim_start_matches('w').parse().unwrap();
    let (mut r, mut rx) = request(&[1, 2, 3], 1, &[]);
    r.penalties.logit_bias = vec![(id, -100.0)];
    engine.submit(r).unwrap();
    assert_ne!(collect(&mut rx).0, first);
}

#[test]
fn penalties_follow_openais_definition() {
    let (mut r, _rx) = request(&[1], 4, &[]);
    r.penalties = Penalties {
        presence: 0.5,
        frequency: 0.25,
        logit_bias: vec![(2, -3.0), (99, 1.0)],
    };
    let (mut seq, _) = Sequence::new(r);
    let tokenizer = tokenizer();
    for token in [1, 1, 1, 2] {
        seq.accept(token, &tokenizer, &[]).unwrap();
    }
    let got = seq.adjusted(&[0.0, 1.0, 2.0, 3.0]);
    assert_eq!(got, [0.0, 1.0 - 0.5 - 0.75, 2.0 - 3.0 - 0.5 - 0.25, 3.0]);
}
