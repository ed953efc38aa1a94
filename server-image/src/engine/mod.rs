//! The generation engine: one thread owns the model and decodes every running
//! request together (continuous batching).
//!
//! Each loop iteration admits waiting requests (prefilled together as one
//! left-padded batch, whose KV cache then joins the running batch's), runs one decoding
//! step for the whole batch, samples a token per sequence, streams the new text
//! to its request, and drops finished or abandoned sequences from the batch. A
//! request therefore starts within one step of arriving instead of waiting for
//! the batch before it to finish, and a long answer does not hold up short ones.
//!
//! The queue of requests waiting for the batch is bounded ([`Engine::submit_all`]
//! refuses what does not fit), and a request whose client left is dropped from
//! it at the next step, so abandoned requests neither run nor hold queue places.
//! A sequence whose logits are not finite (a diverged model) fails instead of
//! sampling from them.
//!
//! Each request names the LoRA adapter it is decoded with (or none: the base
//! model). Adapters are attached to the model unmerged ([`Engine::attach_adapter`]),
//! and every forward pass routes each row through its own adapter
//! ([`llmops_model::multi_lora`]), so requests for different adapters share
//! the batch. A detached adapter goes once no sequence of its own is left.
//!
//! Log-probabilities cost only the requests that ask for them: the prompt's come
//! from a prefill of their own that keeps every position's logits (the others
//! keep only the last), and a generated token's from its logits row on the
//! host. Both are the log-softmax of the raw logits, before penalties, biases
//! and temperature.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use std::task::Poll;

use llmops_model::{
    AdapterRoutes, KvCache, LogitsProcessor, Model, PeftAdapter, Sampling, StopMatch, StopSequences,
};
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// One request for text after `prompt`.
#[derive(Debug)]
pub struct Request {
    pub prompt: Vec<i64>,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    pub stop: StopSequences,
    /// Log-probabilities to report.
    pub logprobs: Logprobs,
    /// Adjustments of the logits before sampling.
    pub penalties: Penalties,
    /// The attached adapter to decode with; none for the base model.
    pub adapter: Option<u32>,
    /// Receives the text as it is generated, then exactly one `Done` or `Failed`.
    pub events: mpsc::UnboundedSender<Event>,
}

/// Which log-probabilities a request asks for; each with how many of the most
/// likely tokens to list beside the chosen one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Logprobs {
    /// Of every generated token: [`Event::Token`] before its text.
    pub generated: Option<usize>,
    /// Of every prompt token after the first: one [`Event::Prompt`] before any
    /// other event.
    pub prompt: Option<usize>,
}

/// OpenAI's `presence_penalty`, `frequency_penalty` and `logit_bias`: before
/// sampling, token `j`'s logit gets `bias[j] - presence * (c[j] > 0) -
/// frequency * c[j]`, where `c[j]` counts `j` among the tokens generated so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Penalties {
    pub presence: f32,
    pub frequency: f32,
    /// (token id, bias) pairs.
    pub logit_bias: Vec<(usize, f32)>,
}

impl Penalties {
    fn is_active(&self) -> bool {
        self.presence != 0.0 || self.frequency != 0.0 || !self.logit_bias.is_empty()
    }
}

/// One token's log-probability and the most likely tokens at its position,
/// most likely first.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: i64,
    pub logprob: f32,
    pub top: Vec<(i64, f32)>,
}

/// What a request hears back.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The log-probabilities of the prompt's tokens after the first.
    Prompt(Vec<TokenLogprob>),
    /// A generated token's log-probability (also that of a final end of
    /// sequence, which adds no text), sent before its text.
    Token(TokenLogprob),
    /// New text (never empty).
    Text(String),
    Done(Finish),
    /// Generation failed; the message is safe to show to the client.
    Failed(String),
}

/// Why and after how many tokens a request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// OpenAI's `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the failure of a sequence whose logits are NaN or infinite says.
pub const NON_FINITE_LOGITS: &str =
    "the model produced non-finite logits (NaN or infinity); its weights or inputs have diverged";

/// What a request for an adapter unloaded before it started hears.
pub const ADAPTER_UNLOADED: &str =
    "the adapter this request names was unloaded before it started; it is no longer served";

/// Sends requests to the engine thread.
#[derive(Clone, Debug)]
pub struct Engine {
    requests: mpsc::UnboundedSender<Request>,
    commands: mpsc::UnboundedSender<Command>,
    queue: Queue,
}

/// Changes to the attached adapters, made by the engine thread between steps.
enum Command {
    Attach {
        id: u32,
        adapter: Box<PeftAdapter>,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    Detach(u32),
}

/// Why requests were not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The waiting queue has no room for them: the server is overloaded.
    #[error("the server is overloaded: {max_queue} prompts are already waiting")]
    Overloaded { max_queue: usize },
    /// The engine thread has stopped (it only stops when the process does).
    #[error("the generation engine has stopped")]
    Stopped,
}

/// Prompts submitted and not yet taken into the running batch, bounded by
/// `max`; shared by the submitters and the engine thread, and mirrored in the
/// `queue_depth` gauge.
#[derive(Clone, Debug)]
struct Queue {
    depth: Arc<AtomicUsize>,
    max: usize,
    metrics: Arc<Metrics>,
}

impl Queue {
    /// Reserves `n` places, all or none.
    fn reserve(&self, n: usize) -> Result<(), SubmitError> {
        self.depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |depth| {
                depth.checked_add(n).filter(|&d| d <= self.max)
            })
            .map_err(|_| SubmitError::Overloaded {
                max_queue: self.max,
            })?;
        self.metrics.queue_depth.inc_by(n as i64);
        Ok(())
    }

    /// Gives back `n` places (taken into the batch, or abandoned).
    fn release(&self, n: usize) {
        if n > 0 {
            self.depth.fetch_sub(n, Ordering::AcqRel);
            self.metrics.queue_depth.dec_by(n as i64);
        }
    }
}

impl Engine {
    /// Starts the engine thread. `max_batch` bounds the sequences decoded
    /// together, `max_queue` the prompts waiting for the batch (both at least 1).
    pub fn start(
        model: Model,
        tokenizer: Arc<Tokenizer>,
        eos_token_ids: Vec<i64>,
        max_batch: usize,
        max_queue: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let queue = Queue {
            depth: Arc::new(AtomicUsize::new(0)),
            max: max_queue.max(1),
            metrics: metrics.clone(),
        };
        let worker = Worker {
            commands: command_rx,
            attached: Default::default(),
            detaching: Vec::new(),
            model,
            tokenizer,
            eos_token_ids,
            max_batch: max_batch.max(1),
            metrics,
            requests: rx,
            queue: queue.clone(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            cache: KvCache::new(0),
        };
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || worker.run())
            .expect("cannot start the engine thread");
        Engine {
            requests: tx,
            commands: command_tx,
            queue,
        }
    }

    /// Attaches `adapter` under `id` between two decoding steps; answers
    /// whether it fits the model (nothing changes when it does not).
    pub async fn attach_adapter(&self, id: u32, adapter: PeftAdapter) -> Result<(), String> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Attach {
                id,
                adapter: Box::new(adapter),
                done,
            })
            .map_err(|_| SubmitError::Stopped.to_string())?;
        answer.await.map_err(|_| SubmitError::Stopped.to_string())?
    }

    /// Detaches adapter `id` once no sequence decoded with it is left; its
    /// requests already taken finish with it.
    pub fn detach_adapter(&self, id: u32) {
        let _ = self.commands.send(Command::Detach(id));
    }

    /// Most prompts that may wait for the batch.
    pub fn max_queue(&self) -> usize {
        self.queue.max
    }

    pub fn submit(&self, request: Request) -> Result<(), SubmitError> {
        self.submit_all(vec![request])
    }

    /// Queues every request, or none of them when the queue cannot take them all.
    pub fn submit_all(&self, requests: Vec<Request>) -> Result<(), SubmitError> {
        let n = requests.len();
        self.queue.reserve(n)?;
        for (sent, request) in requests.into_iter().enumerate() {
            if self.requests.send(request).is_err() {
                self.queue.release(n - sent);
                return Err(SubmitError::Stopped);
            }
        }
        Ok(())
    }
}

/// A request being decoded.
struct Sequence {
    events: mpsc::UnboundedSender<Event>,
    adapter: Option<u32>,
    sampler: LogitsProcessor,
    stop: StopSequences,
    logprobs: Logprobs,
    penalties: Penalties,
    /// How often each token was generated, kept only under a penalty.
    counts: HashMap<i64, u32>,
    max_new_tokens: usize,
    prompt_tokens: usize,
    generated: Vec<u32>,
    /// The decoded text so far (complete characters only).
    text: String,
    /// Incremental detokenization window: `generated[prefix..read]` was decoded
    /// last time; decoding `generated[prefix..]` now yields the new text after it.
    /// Decoding from a little before the new tokens keeps decoders that treat a
    /// sequence's start specially (leading spaces) consistent.
    prefix: usize,
    read: usize,
    /// Bytes of `text` already sent.
    sent: usize,
    /// The token to feed at the next decoding step.
    next_input: i64,
    /// When the first and the latest generated token were taken.
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
}

impl Sequence {
    fn send(&self, event: Event) {
        // A closed channel means the client left; the next step drops the sequence.
        let _ = self.events.send(event);
    }

    fn new(request: Request) -> (Self, Vec<i64>) {
        let seq = Sequence {
            events: request.events,
            adapter: request.adapter,
            sampler: LogitsProcessor::new(request.seed, request.sampling),
            stop: request.stop,
            logprobs: request.logprobs,
            penalties: request.penalties,
            counts: HashMap::new(),
            max_new_tokens: request.max_new_tokens,
            prompt_tokens: request.prompt.len(),
            generated: Vec::new(),
            text: String::new(),
            prefix: 0,
            read: 0,
            sent: 0,
            next_input: 0,
            first_token_at: None,
            last_token_at: None,
        };
        (seq, request.prompt)
    }

    /// Sends `self.text[self.sent..end]` if non-empty.
    fn emit(&mut self, end: usize) {
        if end > self.sent
            && let Some(delta) = self.text.get(self.sent..end)
        {
            self.send(Event::Text(delta.to_string()));
            self.sent = end;
        }
    }

    /// Appends the text of the tokens decoded since last time. Unless `flush`,
    /// an incomplete UTF-8 character at the end waits for the next token.
    fn detokenize(&mut self, tokenizer: &Tokenizer, flush: bool) -> Result<(), String> {
        let before = decode(tokenizer, &self.generated[self.prefix..self.read])?;
        let now = decode(tokenizer, &self.generated[self.prefix..])?;
        if now.len() > before.len()
            && now.is_char_boundary(before.len())
            && (flush || !now.ends_with('\u{FFFD}'))
        {
            self.text.push_str(&now[before.len()..]);
            self.prefix = self.read;
            self.read = self.generated.len();
        }
        Ok(())
    }

    /// Seconds between generated tokens, on average; none below two tokens.
    fn time_per_output_token(&self) -> Option<f64> {
        let (first, last) = (self.first_token_at?, self.last_token_at?);
        let intervals = self.generated.len().checked_sub(1).filter(|&n| n > 0)?;
        Some(last.duration_since(first).as_secs_f64() / intervals as f64)
    }

    /// Tokens this sequence keeps in the KV cache: its prompt and what it generated.
    fn cached_tokens(&self) -> usize {
        self.prompt_tokens + self.generated.len()
    }

    fn finish(&self, reason: FinishReason) -> Option<FinishReason> {
        self.send(Event::Done(Finish {
            reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.generated.len(),
        }));
        Some(reason)
    }

    /// Takes one sampled token; returns why the sequence ended, if it did.
    fn accept(
        &mut self,
        token: i64,
        tokenizer: &Tokenizer,
        eos: &[i64],
    ) -> Result<Option<FinishReason>, String> {
        if eos.contains(&token) {
            self.detokenize(tokenizer, true)?;
            self.emit(self.text.len());
            return Ok(self.finish(FinishReason::Stop));
        }
        self.generated.push(token as u32);
        if self.penalties.presence != 0.0 || self.penalties.frequency != 0.0 {
            *self.counts.entry(token).or_default() += 1;
        }
        self.next_input = token;
        let now = Instant::now();
        self.first_token_at.get_or_insert(now);
        self.last_token_at = Some(now);
        let last = self.generated.len() >= self.max_new_tokens;
        self.detokenize(tokenizer, last)?;
        match self.stop.check(&self.text) {
            StopMatch::Stopped { at } => {
                self.emit(at);
                Ok(self.finish(FinishReason::Stop))
            }
            StopMatch::Continue { safe } if !last => {
                self.emit(safe);
                Ok(None)
            }
            StopMatch::Continue { .. } => {
                self.emit(self.text.len());
                Ok(self.finish(FinishReason::Length))
            }
        }
    }
}

impl Sequence {
    /// `logits` with the penalties and biases applied.
    fn adjusted(&self, logits: &[f32]) -> Vec<f32> {
        let mut row = logits.to_vec();
        for &(token, bias) in &self.penalties.logit_bias {
            if let Some(x) = row.get_mut(token) {
                *x += bias;
            }
        }
        for (&token, &count) in &self.counts {
            if let Some(x) = row.get_mut(token as usize) {
                *x -= self.penalties.presence + self.penalties.frequency * count as f32;
            }
        }
        row
    }
}

/// The log-softmax of `logits` at `token`, and the `k` most likely tokens.
pub fn token_logprob(logits: &[f32], token: usize, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .map(|&x| (f64::from(x) - f64::from(max)).exp())
        .sum();
    let lse = f64::from(max) + sum.ln();
    let logprob = |i: usize| (f64::from(logits[i]) - lse) as f32;
    let k = k.min(logits.len());
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let by_logit = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    if k > 0 && k < order.len() {
        order.select_nth_unstable_by(k - 1, by_logit);
    }
    order.truncate(k);
    order.sort_by(by_logit);
    TokenLogprob {
        token: token as i64,
        logprob: logprob(token),
        top: order.into_iter().map(|i| (i as i64, logprob(i))).collect(),
    }
}

fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String, String> {
    tokenizer
        .decode(ids, true)
        .map_err(|e| format!("cannot decode the generated tokens: {e}"))
}

struct Worker {
    model: Model,
    tokenizer: Arc<Tokenizer>,
    eos_token_ids: Vec<i64>,
    max_batch: usize,
    metrics: Arc<Metrics>,
    requests: mpsc::UnboundedReceiver<Request>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// The adapters attached to the model.
    attached: std::collections::HashSet<u32>,
    /// Adapters to detach once no sequence uses them.
    detaching: Vec<u32>,
    /// The places of the submitted requests not yet in the batch.
    queue: Queue,
    /// Received requests waiting for room in the batch, oldest first.
    waiting: VecDeque<Request>,
    /// Row `i` of `cache` belongs to `running[i]`.
    running: Vec<Sequence>,
    cache: KvCache,
}

impl Worker {
    fn run(mut self) {
        self.cache = self.model.new_cache();
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                // Idle: sleep until a request or a command comes (or the
                // server stops).
                match self.idle_wait() {
                    Some(Some(request)) => self.waiting.push_back(request),
                    Some(None) => {}
                    None => return,
                }
            }
            while let Ok(command) = self.commands.try_recv() {
                self.command(command);
            }
            while let Ok(request) = self.requests.try_recv() {
                self.waiting.push_back(request);
            }
            // Requests whose client left (a timeout, a closed connection) give
            // their place back without running.
            let before = self.waiting.len();
            self.waiting.retain(|r| !r.events.is_closed());
            self.queue.release(before - self.waiting.len());
            let room = self.max_batch.saturating_sub(self.running.len());
            let take = room.min(self.waiting.len());
            if take > 0 {
                let batch: Vec<Request> = self.waiting.drain(..take).collect();
                self.queue.release(take);
                self.admit(batch);
            }
            self.publish();
            if !self.running.is_empty() {
                self.step();
                // Also after the step: an idle engine shows zero.
                self.publish();
            }
            self.detach_unused();
        }
    }

    /// Blocks until a request (`Some(Some)`) or a command (`Some(None)`)
    /// arrives; `None` when the engine's handles are all gone.
    fn idle_wait(&mut self) -> Option<Option<Request>> {
        futures::executor::block_on(futures::future::poll_fn(|cx| {
            if let Poll::Ready(Some(command)) = self.commands.poll_recv(cx) {
                self.command(command);
                return Poll::Ready(Some(None));
            }
            self.requests.poll_recv(cx).map(|r| r.map(Some))
        }))
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Attach { id, adapter, done } => {
                let result = self
                    .model
                    .attach_adapter(id, &adapter)
                    .map_err(|e| e.to_string());
                if result.is_ok() {
                    self.attached.insert(id);
                }
                let _ = done.send(result);
            }
            Command::Detach(id) => self.detaching.push(id),
        }
    }

    /// Detaches the adapters asked to go that no sequence, running or
    /// waiting, uses any more.
    fn detach_unused(&mut self) {
        if self.detaching.is_empty() {
            return;
        }
        let (running, waiting) = (&self.running, &self.waiting);
        let in_use = |id: u32| {
            running.iter().any(|s| s.adapter == Some(id))
                || waiting.iter().any(|r| r.adapter == Some(id))
        };
        let (busy, unused): (Vec<u32>, Vec<u32>) =
            self.detaching.iter().partition(|&&id| in_use(id));
        for id in unused {
            self.model.detach_adapter(id);
            self.attached.remove(&id);
        }
        self.detaching = busy;
    }

    /// The running batch's gauges.
    fn publish(&self) {
        self.metrics
            .running_sequences
            .set(self.running.len() as i64);
        let cached: usize = self.running.iter().map(Sequence::cached_tokens).sum();
        self.metrics.kv_cache_tokens.set(cached as i64);
    }

    /// Prefills `requests` and adds them to the running batch, except those
    /// already finished (no or one token asked for, an immediate stop) or
    /// abandoned. Those asking for the prompt's log-probabilities are prefilled
    /// apart, so the others keep their cheaper prefill.
    fn admit(&mut self, requests: Vec<Request>) {
        let attached = &self.attached;
        let (scored, plain): (Vec<Request>, Vec<Request>) = requests
            .into_iter()
            .filter(|r| !r.events.is_closed())
            .filter(|r| match r.adapter {
                // Unloaded between the API's lookup and now: never the base
                // model's answer in its place.
                Some(id) if !attached.contains(&id) => {
                    let _ = r.events.send(Event::Failed(ADAPTER_UNLOADED.into()));
                    false
                }
                _ => true,
            })
            .partition(|r| r.logprobs.prompt.is_some());
        for group in [plain, scored] {
            if !group.is_empty() {
                self.admit_group(group);
            }
        }
    }

    /// Prefills `requests` together (left-padded to the longest prompt).
    fn admit_group(&mut self, requests: Vec<Request>) {
        let (mut seqs, prompts): (Vec<Sequence>, Vec<Vec<i64>>) =
            requests.into_iter().map(Sequence::new).unzip();
        let started = Instant::now();
        let mut cache = self.model.new_cache();
        let top: Vec<Option<usize>> = seqs.iter().map(|s| s.logprobs.prompt).collect();
        let adapters: Vec<Option<u32>> = seqs.iter().map(|s| s.adapter).collect();
        let prefilled = routes(&self.model, &adapters).and_then(|routes| {
            let routes = routes.as_ref();
            if top.iter().any(Option::is_some) {
                prefill_scored(&self.model, &prompts, &top, &mut cache, routes)
            } else {
                prefill(&self.model, &prompts, &mut cache, routes).map(|rows| (rows, Vec::new()))
            }
        });
        let (rows, scores) = match prefilled {
            Ok(prefilled) => prefilled,
            Err(e) => {
                fail_all(&seqs, &e);
                return;
            }
        };
        self.metrics
            .prefill_seconds
            .observe(started.elapsed().as_secs_f64());
        let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
        self.metrics.prompt_tokens.inc_by(prompt_tokens as u64);
        let mut scores = scores.into_iter();
        let mut keep = Vec::new();
        for (i, (seq, row)) in seqs.iter_mut().zip(&rows).enumerate() {
            if let Some(score) = scores.next() {
                seq.send(Event::Prompt(score));
            }
            if seq.max_new_tokens == 0 {
                // Only the prompt was asked about.
                seq.finish(FinishReason::Length);
                continue;
            }
            if let Ok(None) = self.sample_into(seq, row) {
                keep.push(i);
            }
        }
        let Some(seqs) = keep_rows(seqs, &mut cache, &keep) else {
            return;
        };
        if seqs.is_empty() {
            return;
        }
        if let Err(e) = self.cache.append(cache) {
            fail_all(&seqs, &e.to_string());
            return;
        }
        self.running.extend(seqs);
    }

    /// Samples the next token of `seq` from its logits row; a row with a NaN or
    /// an infinity fails the sequence instead.
    fn sample_into(&self, seq: &mut Sequence, logits: &[f32]) -> Result<Option<FinishReason>, ()> {
        if !logits.iter().all(|v| v.is_finite()) {
            seq.send(Event::Failed(format!(
                "generation failed: {NON_FINITE_LOGITS}"
            )));
            return Err(());
        }
        let adjusted;
        let row = if seq.penalties.is_active() {
            adjusted = seq.adjusted(logits);
            &adjusted[..]
        } else {
            logits
        };
        let token = match seq.sampler.sample_slice(row) {
            Ok(t) => t as i64,
            Err(e) => {
                seq.send(Event::Failed(format!("sampling failed: {e}")));
                return Err(());
            }
        };
        if let Some(k) = seq.logprobs.generated {
            seq.send(Event::Token(token_logprob(logits, token as usize, k)));
        }
        match seq.accept(token, &self.tokenizer, &self.eos_token_ids) {
            Ok(finished) => {
                if !self.eos_token_ids.contains(&token) {
                    self.metrics.generated_tokens.inc();
                }
                if finished.is_some()
                    && let Some(seconds) = seq.time_per_output_token()
                {
                    self.metrics.time_per_output_token_seconds.observe(seconds);
                }
                Ok(finished)
            }
            Err(e) => {
                seq.send(Event::Failed(e));
                Err(())
            }
        }
    }

    /// One decoding step for every running sequence.
    fn step(&mut self) {
        let inputs: Vec<i64> = self.running.iter().map(|s| s.next_input).collect();
        let adapters: Vec<Option<u32>> = self.running.iter().map(|s| s.adapter).collect();
        let n = inputs.len() as i64;
        let rows = routes(&self.model, &adapters).and_then(|routes| {
            Tensor::f_from_slice(&inputs)
                .and_then(|t| t.f_view([n, 1]))
                .map_err(|e| e.to_string())
                .and_then(|ids| {
                    self.model
                        .forward_last_routed(&ids, None, &mut self.cache, routes.as_ref())
                        .map_err(|e| e.to_string())
                })
                .and_then(|l| host_rows(&l))
        });
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                // The batch's cache is in an unknown state: fail every request in it.
                fail_all(&std::mem::take(&mut self.running), &e);
                self.cache.clear();
                return;
            }
        };
        let mut running = std::mem::take(&mut self.running);
        let mut keep = Vec::with_capacity(running.len());
        for (i, (seq, row)) in running.iter_mut().zip(&rows).enumerate() {
            if seq.events.is_closed() {
                continue;
            }
            if let Ok(None) = self.sample_into(seq, row) {
                keep.push(i);
            }
        }
        match keep_rows(running, &mut self.cache, &keep) {
            Some(kept) => self.running = kept,
            None => self.cache.clear(),
        }
    }
}

/// The routes of a batch whose rows use `adapters`.
fn routes(model: &Model, adapters: &[Option<u32>]) -> Result<Option<AdapterRoutes>, String> {
    AdapterRoutes::from_rows(adapters, model.device()).map_err(|e| e.to_string())
}

/// Tells every sequence that generation failed.
fn fail_all(seqs: &[Sequence], error: &str) {
    for seq in seqs {
        seq.send(Event::Failed(format!("generation failed: {error}")));
    }
}

/// Keeps the sequences at `keep` (ascending) and their rows of `cache`. When the
/// cache cannot drop rows, the kept sequences are failed and `None` returned.
fn keep_rows(seqs: Vec<Sequence>, cache: &mut KvCache, keep: &[usize]) -> Option<Vec<Sequence>> {
    if keep.len() == seqs.len() {
        return Some(seqs);
    }
    let indices: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
    let kept: Vec<Sequence> = seqs
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep.binary_search(i).is_ok())
        .map(|(_, seq)| seq)
        .collect();
    if let Err(e) = cache.retain(&indices) {
        fail_all(&kept, &e.to_string());
        return None;
    }
    Some(kept)
}

/// Runs `prompts` through the model as one batch, left-padded to the longest,
/// filling `cache`; returns each prompt's next-token logits.
fn prefill(
    model: &Model,
    prompts: &[Vec<i64>],
    cache: &mut KvCache,
    routes: Option<&AdapterRoutes>,
) -> Result<Vec<Vec<f32>>, String> {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * longest);
    let mut mask = Vec::with_capacity(prompts.len() * longest);
    for prompt in prompts {
        let pad = longest - prompt.len();
        ids.extend(std::iter::repeat_n(0, pad).chain(prompt.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, prompt.len())));
    }
    let shape = [prompts.len() as i64, longest as i64];
    let mut run = || -> Result<Tensor, llmops_model::Error> {
        let ids = Tensor::f_from_slice(&ids)?.f_view(shape)?;
        // Without padding the model takes its plain causal path.
        let mask = mask
            .contains(&0)
            .then(|| Tensor::f_from_slice(&mask).and_then(|m| m.f_view(shape)))
            .transpose()?;
        model.forward_last_routed(&ids, mask.as_ref(), cache, routes)
    };
    host_rows(&run().map_err(|e| e.to_string())?)
}

/// Each prompt's next-token logits, and its tokens' log-probabilities.
type Prefilled = (Vec<Vec<f32>>, Vec<Vec<TokenLogprob>>);

/// Like [`prefill`], also returning for each prompt whose `top` is set the
/// log-probabilities of its tokens after the first, each with the `top` most
/// likely tokens at its position.
fn prefill_scored(
    model: &Model,
    prompts: &[Vec<i64>],
    top: &[Option<usize>],
    cache: &mut KvCache,
    routes: Option<&AdapterRoutes>,
) -> Result<Prefilled, String> {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * longest);
    let mut mask = Vec::with_capacity(prompts.len() * longest);
    for prompt in prompts {
        let pad = longest - prompt.len();
        ids.extend(std::iter::repeat_n(0, pad).chain(prompt.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, prompt.len())));
    }
    let shape = [prompts.len() as i64, longest as i64];
    let k = top.iter().flatten().copied().max().unwrap_or(0) as i64;
    let mut run = || -> Result<_, llmops_model::Error> {
        let ids = Tensor::f_from_slice(&ids)?.f_view(shape)?;
        let mask = Tensor::f_from_slice(&mask)?.f_view(shape)?;
        let logits = model.forward_padded_routed(&ids, &mask, cache, routes)?;
        let last = logits.f_select(1, -1)?;
        if longest < 2 {
            return Ok((last, None));
        }
        // Position t predicts the token at t + 1.
        let logprobs = tch::no_grad(|| -> Result<_, llmops_model::Error> {
            let all = logits
                .f_narrow(1, 0, longest as i64 - 1)?
                .f_log_softmax(-1, Kind::Float)?;
            let next = ids.f_narrow(1, 1, longest as i64 - 1)?.f_to(all.device())?;
            let chosen = all
                .f_gather(2, &next.f_unsqueeze(-1)?, false)?
                .f_squeeze_dim(-1)?;
            let best = if k > 0 {
                let (values, indices) = all.f_topk(k, -1, true, true)?;
                Some((values, indices))
            } else {
                None
            };
            Ok((chosen, best))
        })?;
        Ok((last, Some(logprobs)))
    };
    let (last, logprobs) = run().map_err(|e| e.to_string())?;
    let rows = host_rows(&last)?;
    let Some((chosen, best)) = logprobs else {
        return Ok((rows, vec![Vec::new(); prompts.len()]));
    };
    let chosen = host_rows_3d(&chosen.f_unsqueeze(-1).map_err(|e| e.to_string())?)?;
    let best = match best {
        Some((values, indices)) => Some((host_rows_3d(&values)?, host_ids_3d(&indices)?)),
        None => None,
    };
    let mut scores = Vec::with_capacity(prompts.len());
    for (row, prompt) in prompts.iter().enumerate() {
        let pad = longest - prompt.len();
        let want = top[row].unwrap_or(0);
        let score = (pad..longest - 1)
            .map(|t| TokenLogprob {
                token: ids[row * longest + t + 1],
                logprob: chosen[row][t][0],
                top: best.as_ref().map_or_else(Vec::new, |(values, indices)| {
                    indices[row][t]
                        .iter()
                        .zip(&values[row][t])
                        .take(want)
                        .map(|(&i, &v)| (i, v))
                        .collect()
                }),
            })
            .collect();
        scores.push(score);
    }
    Ok((rows, scores))
}

/// A `[batch, seq, n]` float tensor on the host.
fn host_rows_3d(t: &Tensor) -> Result<Vec<Vec<Vec<f32>>>, String> {
    let host = t
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_to(Device::Cpu))
        .map_err(|e| e.to_string())?;
    Vec::<Vec<Vec<f32>>>::try_from(&host).map_err(|e| e.to_string())
}

/// A `[batch, seq, n]` integer tensor on the host.
fn host_ids_3d(t: &Tensor) -> Result<Vec<Vec<Vec<i64>>>, String> {
    let host = t
        .f_to_kind(Kind::Int64)
        .and_then(|t| t.f_to(Device::Cpu))
        .map_err(|e| e.to_string())?;
    Vec::<Vec<Vec<i64>>>::try_from(&host).map_err(|e| e.to_string())
}

/// Logits `[batch, vocab]` as one fp32 vector per row, on the host.
fn host_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>, String> {
    let host = logits
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_to(Device::Cpu))
        .map_err(|e| e.to_string())?;
    Vec::<Vec<f32>>::try_from(&host).map_err(|e| e.to_string())
}

#[cfg(test)]
impl Engine {
    /// An engine without its thread: what is submitted arrives on the returned
    /// receiver, and the test answers it (or does not).
    pub(crate) fn manual(
        max_queue: usize,
        metrics: Arc<Metrics>,
    ) -> (Self, mpsc::UnboundedReceiver<Request>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (commands, _) = mpsc::unbounded_channel();
        let queue = Queue {
            depth: Arc::new(AtomicUsize::new(0)),
            max: max_queue.max(1),
            metrics,
        };
        (
            Engine {
                requests: tx,
                commands,
                queue,
            },
            rx,
        )
    }
}

#[cfg(test)]
pub(crate) mod tests;
