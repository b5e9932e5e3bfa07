//! One model's continuous batch, on a thread of its own. HTTP handlers
//! hand it [`Job`]s through a bounded queue; every step it lets waiting
//! sequences join the batch while slots are free, drops the sequences
//! whose client went away, advances all the others by one token together
//! ([`Batch::step`]), and sends each request its text as it comes.

use super::metrics::Metrics;
use crate::data::Tokenizer;
use crate::engine::Backend;
use crate::generate::chat::ChatTemplate;
use crate::generate::{Batch, Event, Finish, Prompt, Request, SamplerConfig, SeqId, TokenLogprobs};
use crate::model::Gpt;
use anyhow::{Context, Result};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// One sequence to generate: a choice of a request.
#[derive(Clone, Debug)]
pub struct Choice {
    pub prompt: Vec<u32>,
    pub sampling: SamplerConfig,
    pub seed: u64,
    pub stop: Vec<String>,
    pub max_tokens: usize,
    pub logprobs: Option<usize>,
}

/// What a request hears back, per choice (`index`).
#[derive(Debug)]
pub enum Update {
    /// A token's log-probabilities (when asked for), before its text.
    Token {
        index: usize,
        info: TokenLogprobs,
    },
    Text {
        index: usize,
        text: String,
    },
    Finish {
        index: usize,
        finish: Finish,
    },
    Error {
        index: usize,
        message: String,
    },
}

/// A request: its choices, and where their updates go. Dropping the
/// receiver (the client disconnected) frees the choices' slots at the next step.
pub struct Job {
    pub choices: Vec<Choice>,
    pub updates: UnboundedSender<Update>,
}

/// What the HTTP side knows of a served model.
pub struct ModelHandle {
    pub name: String,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    pub block_size: usize,
    pub vocab_size: usize,
    pub parallel: usize,
    /// Most sequences that may wait for a slot.
    pub queue: usize,
    /// Sequences (choices) waiting for a slot: queued or taken but not in
    /// the batch yet.
    pub waiting: Arc<AtomicUsize>,
    /// Sequences in the batch.
    pub active: Arc<AtomicUsize>,
    /// False once the batch thread has stopped (it should not: a bug).
    pub alive: Arc<AtomicBool>,
    submit: SyncSender<Job>,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// `queue` sequences are waiting already.
    Full,
    /// The batch thread is gone.
    Stopped,
}

impl ModelHandle {
    /// Queues a job unless its sequences would overfill the queue.
    pub fn submit(&self, job: Job) -> std::result::Result<(), Rejected> {
        let n = job.choices.len();
        if self.waiting.fetch_add(n, Ordering::SeqCst) + n > self.queue {
            self.waiting.fetch_sub(n, Ordering::SeqCst);
            return Err(Rejected::Full);
        }
        self.submit.try_send(job).map_err(|e| {
            self.waiting.fetch_sub(n, Ordering::SeqCst);
            match e {
                std::sync::mpsc::TrySendError::Full(_) => Rejected::Full,
                std::sync::mpsc::TrySendError::Disconnected(_) => Rejected::Stopped,
            }
        })
    }
}

/// Marks the model's batch as stopped when its thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Starts the batch thread of `model`: up to `parallel` sequences decode
/// together, up to `queue` more wait.
pub fn spawn<B: Backend>(
    name: String,
    model: Gpt<B>,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    (parallel, queue): (usize, usize),
    metrics: Arc<Metrics>,
) -> Result<ModelHandle> {
    let (block_size, vocab_size) = (model.cfg.block_size, model.cfg.vocab_size);
    let batch = Batch::new(Arc::new(model), tokenizer.clone(), parallel)?;
    // At most `queue` jobs: each has at least one sequence.
    let (submit, jobs) = sync_channel(queue);
    let waiting = Arc::new(AtomicUsize::new(0));
    let active = Arc::new(AtomicUsize::new(0));
    let alive = Arc::new(AtomicBool::new(true));
    let guard = AliveGuard(alive.clone());
    let worker = Worker {
        name: name.clone(),
        batch,
        jobs,
        pending: VecDeque::new(),
        seqs: HashMap::new(),
        waiting: waiting.clone(),
        active: active.clone(),
        metrics,
    };
    std::thread::Builder::new()
        .name(format!("batch-{name}"))
        .spawn(move || {
            let _guard = guard;
            crate::engine::fastmath::flush_subnormals();
            worker.run()
        })
        .context("cannot start the batch thread")?;
    Ok(ModelHandle {
        name,
        tokenizer,
        template,
        block_size,
        vocab_size,
        parallel,
        queue,
        waiting,
        active,
        alive,
        submit,
    })
}

struct Worker<B: Backend> {
    name: String,
    batch: Batch<B>,
    jobs: Receiver<Job>,
    /// Choices of taken requests waiting for a slot.
    pending: VecDeque<(usize, Choice, UnboundedSender<Update>)>,
    /// The request (choice index, channel) of each sequence decoding.
    seqs: HashMap<SeqId, (usize, UnboundedSender<Update>)>,
    waiting: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl<B: Backend> Worker<B> {
    fn run(mut self) {
        loop {
            if !self.admit() {
                return;
            }
            // Clients that went away free their slots now.
            let gone: Vec<SeqId> = self.seqs.iter().filter(|(_, (_, tx))| tx.is_closed()).map(|(id, _)| *id).collect();
            for id in gone {
                if let Some((_, finish)) = self.batch.cancel(id) {
                    self.metrics.record_finish(&finish);
                }
                self.seqs.remove(&id);
            }
            let decoding = self.batch.active();
            self.active.store(decoding, Ordering::SeqCst);
            if decoding == 0 {
                continue;
            }
            let start = Instant::now();
            let events = self.batch.step();
            self.metrics.record_step(&self.name, decoding, start.elapsed());
            for (id, event) in events {
                let Some((index, tx)) = self.seqs.get(&id) else { continue };
                let index = *index;
                // A failed send: the client is gone; its slot is freed above next time.
                match event {
                    Event::Token(info) => {
                        let _ = tx.send(Update::Token { index, info });
                    }
                    Event::Text(text) => {
                        let _ = tx.send(Update::Text { index, text });
                    }
                    Event::Finish(finish) => {
                        self.metrics.record_finish(&finish);
                        let _ = tx.send(Update::Finish { index, finish });
                        self.seqs.remove(&id);
                    }
                }
            }
            self.active.store(self.batch.active(), Ordering::SeqCst);
        }
    }

    /// Fills free slots from the pending choices and the queue, waiting for
    /// a request when nothing decodes. False when the server is shutting down.
    fn admit(&mut self) -> bool {
        while self.batch.free_slots() > 0 {
            if let Some((index, choice, tx)) = self.pending.pop_front() {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                if tx.is_closed() {
                    continue;
                }
                let req = Request {
                    sampling: choice.sampling,
                    seed: choice.seed,
                    stop: choice.stop,
                    logprobs: choice.logprobs,
                    ..Request::new(Prompt::Tokens(choice.prompt), choice.max_tokens)
                };
                match self.batch.add(req) {
                    Ok(id) => {
                        self.seqs.insert(id, (index, tx));
                    }
                    Err(e) => {
                        let _ = tx.send(Update::Error { index, message: format!("{e:#}") });
                    }
                }
                continue;
            }
            let job = if self.batch.active() == 0 {
                match self.jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return false,
                }
            } else {
                match self.jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break,
                }
            };
            // A client that left while queued: its sequences never start.
            if job.updates.is_closed() {
                self.waiting.fetch_sub(job.choices.len(), Ordering::SeqCst);
                continue;
            }
            for (index, choice) in job.choices.into_iter().enumerate() {
                self.pending.push_back((index, choice, job.updates.clone()));
            }
        }
        true
    }
}
