//! `trainer`: runs one step of a model's life for the resource in `--resource`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use llmops_contract::{env, exit};
use llmops_crds::{Dataset, FineTune, PretrainJob};
use llmops_trainer::artifact::owner_of;
use llmops_trainer::finetune;
use llmops_trainer::pretrain;
use llmops_trainer::train::{Outcome, Permanence, interrupt::Interrupt, launch};
use llmops_trainer::{bench, prepare, progress::Reporter, resource, termination};

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "llmops trainer: data preparation and training"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare a Dataset: collect, clean, dedup, tokenize, segment and shard.
    Prepare {
        /// The Dataset resource (YAML or JSON).
        #[arg(long, env = env::RESOURCE)]
        resource: PathBuf,
        /// Output URI when the resource has no spec.output.uri
        /// (default file://./out/<name>).
        #[arg(long)]
        output: Option<String>,
    },
    /// Pretrain a PretrainJob's model from scratch, resuming from the newest checkpoint.
    Pretrain {
        /// The PretrainJob resource (YAML or JSON).
        #[arg(long, env = env::RESOURCE)]
        resource: PathBuf,
        /// Dataset artifact URI (default: the resource's status.dataset.uri).
        #[arg(long)]
        dataset: Option<String>,
        /// Output URI (default: spec.output.uri, else
        /// file://./out/pretrainjobs/<name>).
        #[arg(long)]
        output: Option<String>,
    },
    /// Fine-tune a FineTune's base model (full or LoRA), evaluate it, check its
    /// gates and export it, resuming from the newest checkpoint.
    Finetune {
        /// The FineTune resource (YAML or JSON).
        #[arg(long, env = env::RESOURCE)]
        resource: PathBuf,
        /// Base model URI (default: status.lineage.baseModel.uri, else spec.baseModel.uri).
        #[arg(long)]
        base_model: Option<String>,
        /// Dataset artifact URI (default: status.lineage.dataset.uri).
        #[arg(long)]
        dataset: Option<String>,
        /// Output URI (default: spec.output.uri, else file://./out/finetunes/<name>).
        #[arg(long)]
        output: Option<String>,
    },
    /// Delete a Dataset's artifact directory when the Dataset is deleted with
    /// `deletionPolicy: Delete`. Deleting what is already gone succeeds. Only an
    /// empty prefix, or one whose `.llmops-owner.json` names this Dataset, is
    /// deleted; anything else is kept and the command exits with status 2.
    Clean {
        /// Directory URI of the artifact.
        #[arg(long)]
        uri: String,
        /// Secret whose `LLMOPS_CRED_<SECRET>_*` variables hold the store's
        /// credentials (default: the ambient identity).
        #[arg(long)]
        credentials_secret: Option<String>,
        /// The Dataset whose artifact it is, as NAMESPACE/NAME (with --uid).
        #[arg(long, requires = "uid")]
        dataset: Option<String>,
        /// Any other object whose artifact it is, as KIND/NAMESPACE/NAME (with
        /// --uid), e.g. PretrainJob/ml/base.
        #[arg(long, requires = "uid", conflicts_with = "dataset")]
        owner: Option<String>,
        /// The uid of that Dataset or object.
        #[arg(long)]
        uid: Option<String>,
        /// The Dataset resource (YAML or JSON), instead of --dataset and --uid.
        #[arg(long, env = env::RESOURCE, conflicts_with = "dataset")]
        resource: Option<PathBuf>,
    },
    /// Put a served model at --dest for a server that reads only a directory
    /// (vLLM): downloaded and checked against its manifest and --digest, or a
    /// link to it in the model cache or on a mounted claim.
    FetchModel {
        /// Model URI: s3://, gs://, az://, file://, pvc:// or hf://.
        #[arg(long)]
        uri: String,
        /// The `sha256:` digest the model must have (its manifest's).
        #[arg(long)]
        digest: Option<String>,
        /// Where the model goes: a directory, or a link to one.
        #[arg(long)]
        dest: PathBuf,
        /// Secret whose `LLMOPS_CRED_<SECRET>_*` variables hold the store's
        /// credentials (default: the ambient identity).
        #[arg(long, env = env::MODEL_CREDENTIALS_SECRET)]
        credentials_secret: Option<String>,
        /// The shared model cache to take the model from, or add it to.
        #[arg(long, env = env::MODEL_CACHE_DIR)]
        cache: Option<PathBuf>,
    },
    /// Benchmarks against the Python reference implementations.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Tokenization MB/s and dedup docs/s, next to Python tokenizers and datasketch.
    Prepare(bench::Options),
    /// Training step ms and tokens/s, next to PyTorch eager on the same model and threads.
    Pretrain(pretrain::bench::Options),
}

fn main() -> ExitCode {
    // Workspace builds enable more than one rustls backend (aws-lc-rs through
    // reqwest, ring through the operator), and then rustls refuses to guess.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    // Logs on stderr (JSON in a pod, text on a terminal) and, with OTEL_* set,
    // spans exported under the pod's TRACEPARENT; gRPC export needs the runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        match llmops_telemetry::init(llmops_telemetry::Options::new("llmops-trainer", "warn")) {
            Ok(telemetry) => telemetry,
            Err(e) => return fail(&format!("{e:#}")),
        }
    };
    let root = telemetry.root_span(tracing::info_span!(
        "trainer",
        command = cli.command.name(),
        otel.status_code = tracing::field::Empty,
    ));
    let code = root.in_scope(|| run(cli, &runtime));
    if code != ExitCode::SUCCESS {
        root.record("otel.status_code", "ERROR");
    }
    drop(root);
    telemetry.shutdown();
    code
}

impl Command {
    /// The subcommand, as the root span names it.
    fn name(&self) -> &'static str {
        match self {
            Command::Prepare { .. } => "prepare",
            Command::Pretrain { .. } => "pretrain",
            Command::Finetune { .. } => "finetune",
            Command::Clean { .. } => "clean",
            Command::FetchModel { .. } => "fetch-model",
            Command::Bench { .. } => "bench",
        }
    }
}

fn run(cli: Cli, runtime: &tokio::runtime::Runtime) -> ExitCode {
    match cli.command {
        Command::Prepare { resource, output } => runtime.block_on(run_prepare(resource, output)),
        Command::Clean {
            uri,
            credentials_secret,
            dataset,
            owner,
            uid,
            resource,
        } => match clean_owner(
            dataset.as_deref(),
            owner.as_deref(),
            uid.as_deref(),
            resource.as_deref(),
        ) {
            Ok(owner) => runtime.block_on(run_clean(
                &uri,
                credentials_secret.as_deref(),
                owner.as_ref(),
            )),
            Err(message) => fail(&message),
        },
        Command::FetchModel {
            uri,
            digest,
            dest,
            credentials_secret,
            cache,
        } => runtime.block_on(run_fetch_model(
            &uri,
            digest.as_deref().filter(|d| !d.is_empty()),
            &dest,
            credentials_secret.as_deref().filter(|s| !s.is_empty()),
            cache.as_deref().filter(|c| !c.as_os_str().is_empty()),
        )),
        Command::Bench {
            what: BenchCommand::Prepare(options),
        } => match bench::run(&options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("{e:#}")),
        },
        Command::Pretrain {
            resource,
            dataset,
            output,
        } => runtime.block_on(run_pretrain(
            resource,
            pretrain::Options { dataset, output },
        )),
        Command::Finetune {
            resource,
            base_model,
            dataset,
            output,
        } => runtime.block_on(run_finetune(
            resource,
            finetune::Options {
                base_model,
                dataset,
                output,
            },
        )),
        Command::Bench {
            what: BenchCommand::Pretrain(options),
        } => match pretrain::bench::run(&options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("{e:#}")),
        },
    }
}

/// The part of `trainer pretrain` and `trainer finetune` around the training
/// itself: one process per GPU via the launcher, the status reporter on rank 0,
/// and the exit: the result as termination message (0), the checkpoint of an
/// interruption (143), or one line of error (2 when a restart cannot help).
async fn run_training<K, R, E, F, Fut>(resource: &K, interrupt: Interrupt, train: F) -> ExitCode
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    R: serde::Serialize,
    E: Permanence + std::fmt::Display,
    F: FnOnce(Option<Reporter>, Interrupt) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome<R>, E>>,
{
    if let Some(n) = launch::processes_to_launch() {
        return match launch::launch(n, interrupt).await {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => fail(&format!("cannot start the training processes: {e}")),
        };
    }
    if std::env::var_os(env::STOP_ON_STDIN_EOF).is_some() {
        interrupt.on_stdin_eof();
    }
    let meta = resource.meta();
    let name = meta.name.clone().unwrap_or_default();
    // Only rank 0 writes the resource's status.
    let rank0 = std::env::var(env::RANK).map_or(true, |r| r.is_empty() || r == "0");
    let reporter = if rank0 {
        Some(Reporter::start::<K>(meta.namespace.as_deref(), &name, "progress").await)
    } else {
        None
    };
    match train(reporter.clone(), interrupt).await {
        Ok(Outcome::Finished(result)) => {
            if let Some(result) = result {
                let line = serde_json::to_string(&result).unwrap_or_default();
                termination::write(&line);
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Ok(Outcome::Interrupted { step, checkpoint }) => {
            if let Some(r) = &reporter {
                r.abandon();
            }
            let at = checkpoint
                .as_ref()
                .map_or_else(String::new, |c| format!(", checkpoint {}", c.uri));
            let message = format!("interrupted at step {step}{at}; a restart resumes from it");
            let line = serde_json::json!({
                "interrupted": {"step": step, "checkpoint": checkpoint},
                "message": message,
            })
            .to_string();
            eprintln!("{message}");
            termination::write(&line);
            ExitCode::from(exit::INTERRUPTED)
        }
        Err(e) => {
            if let Some(r) = &reporter {
                r.abandon();
            }
            let code = fail(&e.to_string());
            if e.is_permanent() {
                ExitCode::from(exit::INVALID)
            } else {
                code
            }
        }
    }
}

async fn run_pretrain(resource: PathBuf, options: pretrain::Options) -> ExitCode {
    let job: PretrainJob = match resource::load(&resource, "PretrainJob") {
        Ok(j) => j,
        Err(e) => return fail(&e.to_string()),
    };
    let interrupt = match Interrupt::on_signals() {
        Ok(i) => i,
        Err(e) => return fail(&format!("cannot handle termination signals: {e}")),
    };
    run_training(&job, interrupt, |reporter, interrupt| {
        pretrain::pretrain(&job, &options, reporter, interrupt)
    })
    .await
}

async fn run_finetune(resource: PathBuf, options: finetune::Options) -> ExitCode {
    let ft: FineTune = match resource::load(&resource, "FineTune") {
        Ok(f) => f,
        Err(e) => return fail(&e.to_string()),
    };
    let interrupt = match Interrupt::on_signals() {
        Ok(i) => i,
        Err(e) => return fail(&format!("cannot handle termination signals: {e}")),
    };
    run_training(&ft, interrupt, |reporter, interrupt| {
        finetune::finetune(&ft, &options, reporter, interrupt)
    })
    .await
}

async fn run_prepare(resource: PathBuf, output: Option<String>) -> ExitCode {
    let dataset: Dataset = match resource::load(&resource, "Dataset") {
        Ok(d) => d,
        Err(e) => return fail(&e.to_string()),
    };
    let name = dataset.metadata.name.clone().unwrap_or_default();
    let reporter =
        Reporter::start::<Dataset>(dataset.metadata.namespace.as_deref(), &name, "stats").await;
    let result = match prepare::output_uri(&dataset, output.as_deref()) {
        Ok(uri) => prepare::prepare(&dataset, &uri, &reporter).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(prepared) => {
            let line = serde_json::to_string(&prepared).unwrap_or_default();
            termination::write(&line);
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            reporter.abandon();
            let code = fail(&e.to_string());
            if prepare::is_refused_output(&e) || e.is_permanent() {
                ExitCode::from(exit::INVALID)
            } else {
                code
            }
        }
    }
}

/// The Dataset `trainer clean` deletes for: from --dataset and --uid, else from
/// the resource file, else none (then only an empty prefix is "deleted").
fn clean_owner(
    dataset: Option<&str>,
    owner: Option<&str>,
    uid: Option<&str>,
    resource: Option<&std::path::Path>,
) -> Result<Option<llmops_store::Owner>, String> {
    let api_version = <Dataset as kube::Resource>::api_version(&()).into_owned();
    if let (Some(dataset), Some(uid)) = (dataset, uid) {
        let Some((namespace, name)) = dataset.split_once('/') else {
            return Err(format!("--dataset {dataset:?}: expected NAMESPACE/NAME"));
        };
        return Ok(Some(llmops_store::Owner {
            api_version,
            kind: <Dataset as kube::Resource>::kind(&()).into_owned(),
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }));
    }
    if let (Some(owner), Some(uid)) = (owner, uid) {
        let mut parts = owner.splitn(3, '/');
        let (Some(kind), Some(namespace), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("--owner {owner:?}: expected KIND/NAMESPACE/NAME"));
        };
        return Ok(Some(llmops_store::Owner {
            api_version,
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }));
    }
    match resource {
        Some(path) => resource::load::<Dataset>(path, "Dataset")
            .map(|ds| Some(owner_of(&ds)))
            .map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

/// Deletes the artifact at `uri` if `owner` owns it (see `Store::delete_owned`).
/// A prefix holding anything else is kept, which no retry changes: exit status
/// [`exit::INVALID`] with a message naming `spec.output.uri`.
async fn run_clean(
    uri: &str,
    credentials_secret: Option<&str>,
    owner: Option<&llmops_store::Owner>,
) -> ExitCode {
    let credentials = llmops_store::Credentials::from_secret(credentials_secret);
    let store = match llmops_store::Store::open(uri, &credentials) {
        Ok(store) => store,
        Err(e) => return fail(&format!("cannot open {uri}: {e}")),
    };
    let deleted = match owner {
        Some(owner) => store.delete_owned(owner).await,
        None => store.delete_if_empty().await,
    };
    match deleted {
        Ok(()) => {
            println!("deleted {uri}");
            termination::write(&format!("deleted {uri}"));
            ExitCode::SUCCESS
        }
        Err(llmops_store::StoreError::NotOwned { found, .. }) if owner.is_none() => {
            fail(&format!(
                "kept {uri}: it {found}; nothing was deleted: pass --dataset NAMESPACE/NAME and --uid UID, or --resource FILE, to delete that Dataset's artifact"
            ));
            ExitCode::from(exit::INVALID)
        }
        Err(e @ llmops_store::StoreError::NotOwned { .. }) => {
            fail(&format!("kept {uri}: {}", e.for_field("spec.output.uri")));
            ExitCode::from(exit::INVALID)
        }
        Err(e) => fail(&format!("cannot delete {uri}: {e}")),
    }
}

async fn run_fetch_model(
    uri: &str,
    digest: Option<&str>,
    dest: &std::path::Path,
    credentials_secret: Option<&str>,
    cache: Option<&std::path::Path>,
) -> ExitCode {
    let credentials = llmops_store::Credentials::from_secret(credentials_secret);
    match llmops_trainer::fetch::fetch(uri, digest, dest, &credentials, cache).await {
        Ok(fetched) => {
            let line = match fetched {
                llmops_trainer::fetch::Fetched::Downloaded => {
                    format!("fetched {uri} into {}", dest.display())
                }
                llmops_trainer::fetch::Fetched::Linked { target, .. } => {
                    format!("{} links to {uri} at {}", dest.display(), target.display())
                }
            };
            println!("{line}");
            termination::write(&line);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("cannot fetch {uri}: {e:#}")),
    }
}

fn fail(message: &str) -> ExitCode {
    let line = format!("error: {}", message.replace('\n', " "));
    eprintln!("{line}");
    termination::write(&line);
    ExitCode::FAILURE
}
