//! The contract between the operator and the pods it starts (the `trainer` of
//! Dataset, PretrainJob and FineTune Jobs, the `server` of ModelDeployments): the
//! environment variables, paths, exit codes, field managers and port that both
//! sides must spell alike. Each item says who sets it and who reads it.
//!
//! This crate depends on nothing, so the operator, the images and the tests can
//! all use it; nothing else spells these names.

/// Environment variables of the trainer and server pods.
pub mod env {
    /// The output URI of the run (a Dataset's, a PretrainJob's or a FineTune's
    /// resolved `spec.output.uri`). Set by the operator on every trainer Job. The
    /// trainer takes its output from the resource file instead; the variable
    /// shows it to whoever inspects the pod.
    pub const OUTPUT_URI: &str = "LLMOPS_OUTPUT_URI";

    /// Where `pvc://<claim>/...` claims are mounted ([`crate::path::PVC_ROOT`]).
    /// Set by the operator on trainer and server pods; read by the store
    /// (`llmops_store::ArtifactUri::parse`) in both.
    pub const PVC_ROOT: &str = "LLMOPS_PVC_ROOT";

    /// Where the operator mounts a Dataset's ConfigMap sources
    /// ([`crate::path::SOURCES_DIR`]), one directory per source index. Set by the
    /// operator on `trainer prepare` Jobs; read by `trainer prepare`.
    pub const SOURCES_DIR: &str = "LLMOPS_SOURCES_DIR";

    /// The resource file, when `--resource` is not given. Read by the trainer;
    /// the operator passes `--resource` ([`crate::path::RESOURCE_PATH`]) instead,
    /// so this is for local runs.
    pub const RESOURCE: &str = "LLMOPS_RESOURCE";

    /// The accepted API keys, separated by newlines or commas. Set by the
    /// operator on server pods from the ModelDeployment's `auth.apiKeySecretRef`
    /// (a required `secretKeyRef`); read by the server.
    pub const API_KEYS: &str = "LLMOPS_API_KEYS";

    /// The Secret whose `LLMOPS_CRED_<SECRET>_<KEY>` variables
    /// ([`crate::credentials`]) hold the model store's credentials. Set by the
    /// operator on server pods; read by the server.
    pub const MODEL_CREDENTIALS_SECRET: &str = "LLMOPS_MODEL_CREDENTIALS_SECRET";

    /// The shared model cache (`llmops_store::cache`): a directory where the
    /// server keeps each downloaded model once, by digest, for every pod that
    /// mounts it. Set by the operator on server pods of a ModelDeployment with
    /// `spec.server.modelCache`; read by the server (unset: each pod downloads
    /// its own copy).
    pub const MODEL_CACHE_DIR: &str = "LLMOPS_MODEL_CACHE_DIR";

    /// Training processes per pod, one per GPU. Set by the operator on trainer
    /// pods with more than one GPU; read by the trainer's launcher (default: the
    /// number of visible GPUs).
    pub const PROCS_PER_POD: &str = "LLMOPS_PROCS_PER_POD";

    /// The file for the termination message, instead of
    /// [`crate::path::TERMINATION_MESSAGE`]. Not set by the operator; set by the
    /// trainer's launcher (to `/dev/null` for all but its first process) and by
    /// local runs and tests; read by the trainer.
    pub const TERMINATION_LOG: &str = "LLMOPS_TERMINATION_LOG";

    /// Seconds the ranks of a distributed run wait for each other when they
    /// connect. Not set by the operator (the pod spec or image may); read by the
    /// trainer.
    pub const DIST_TIMEOUT_SECONDS: &str = "LLMOPS_DIST_TIMEOUT_SECONDS";

    /// The collective backend of a distributed run, `nccl` or `tcp` (default:
    /// NCCL on CUDA, TCP on the CPU). Not set by the operator; read by the
    /// trainer.
    pub const COLLECTIVE: &str = "LLMOPS_COLLECTIVE";

    /// The NCCL shared library to open, when not the copy libtorch loaded. Not
    /// set by the operator; read by the trainer.
    pub const NCCL_LIBRARY: &str = "LLMOPS_NCCL_LIBRARY";

    /// The local working copy of checkpoints for outputs in object stores (they
    /// are mirrored to `<output>/checkpoints/`). Not set by the operator; read by
    /// the trainer.
    pub const WORK_DIR: &str = "LLMOPS_WORK_DIR";

    /// Stop gracefully when stdin reaches end of file. Set by the trainer's
    /// launcher on the processes it starts, which read it: the launcher forwards
    /// SIGTERM by closing their stdin.
    pub const STOP_ON_STDIN_EOF: &str = "LLMOPS_STOP_ON_STDIN_EOF";

    /// The pod's index in a multi-pod run (`torchrun` naming). Set by the operator
    /// on trainer pods of runs with more than one replica (from the Indexed Job's
    /// completion index); read by the trainer, whose launcher replaces it with the
    /// process's global rank.
    pub const RANK: &str = "RANK";

    /// The number of pods in a multi-pod run. Set by the operator with [`RANK`];
    /// read by the trainer, whose launcher replaces it with the number of
    /// processes.
    pub const WORLD_SIZE: &str = "WORLD_SIZE";

    /// The host of rank 0. Set by the operator with [`RANK`]; read by the trainer
    /// (default `127.0.0.1`).
    pub const MASTER_ADDR: &str = "MASTER_ADDR";

    /// The port rank 0 listens on ([`crate::MASTER_PORT`]). Set by the operator
    /// with [`RANK`]; read by the trainer.
    pub const MASTER_PORT: &str = "MASTER_PORT";

    /// Set to `1` or `true` to let a Dataset's http(s) sources reach link-local
    /// and cloud-metadata addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254),
    /// which `trainer prepare` refuses by default so that a Dataset cannot read
    /// the node's instance credentials. To be set by the operator when a cluster
    /// administrator opts in; read by `trainer prepare`.
    pub const ALLOW_LINK_LOCAL_SOURCES: &str = "LLMOPS_ALLOW_LINK_LOCAL_SOURCES";

    /// The most bytes `trainer prepare` downloads from one http(s) source
    /// (default 10 GiB). Not set by the operator (the pod spec or image may);
    /// read by the trainer.
    pub const SOURCE_MAX_BYTES: &str = "LLMOPS_SOURCE_MAX_BYTES";

    /// The most bytes one gzip member of a source may decompress to (default
    /// 1 GiB), so that a small compressed file cannot exhaust the pod's memory or
    /// disk. Not set by the operator; read by `trainer prepare`.
    pub const GZIP_MEMBER_MAX_BYTES: &str = "LLMOPS_GZIP_MEMBER_MAX_BYTES";

    /// The longest line, in bytes after decompression, a source may hold
    /// (default 16 MiB): parsers hold a whole line in memory. Not set by the
    /// operator; read by `trainer prepare`.
    pub const LINE_MAX_BYTES: &str = "LLMOPS_LINE_MAX_BYTES";

    /// Seconds `trainer prepare` waits to connect to an http(s) source (default
    /// 30). Not set by the operator; read by the trainer.
    pub const HTTP_CONNECT_TIMEOUT_SECONDS: &str = "LLMOPS_HTTP_CONNECT_TIMEOUT_SECONDS";

    /// Seconds `trainer prepare` waits for the next bytes of an http(s) source
    /// before giving up (default 120). Not set by the operator; read by the
    /// trainer.
    pub const HTTP_READ_TIMEOUT_SECONDS: &str = "LLMOPS_HTTP_READ_TIMEOUT_SECONDS";

    /// The object a trainer or server pod works for, as `KIND/NAMESPACE/NAME`
    /// (`FineTune/ml/support-bot`). Set by the operator on every trainer and
    /// server pod; read by their logging, which puts it on every line.
    pub const OWNER: &str = "LLMOPS_OWNER";

    /// `json` or `text`: how the trainer, server and operator write log lines
    /// (default: text on a terminal, JSON otherwise). Not set by the operator;
    /// read by all three.
    pub const LOG_FORMAT: &str = "LLMOPS_LOG_FORMAT";

    /// The W3C trace context the pod's work continues: the trace of the object's
    /// generation that created the pod. Set by the operator on trainer and server
    /// pods from the pod's [`crate::TRACEPARENT_ANNOTATION`] (downward API); read
    /// by their telemetry, whose first span becomes a child of it.
    pub const TRACEPARENT: &str = "TRACEPARENT";

    /// The process's index within its pod. Set by the trainer's launcher on the
    /// processes it starts; read by them (and its presence tells a process it was
    /// launched). The operator never sets it.
    pub const LOCAL_RANK: &str = "LOCAL_RANK";
}

/// Store credentials: a referenced Secret's keys reach the pods only as
/// environment variables (optional `secretKeyRef`s set by the operator), never
/// through the resource, a ConfigMap or the command line.
///
/// For a Secret named `N`, key `K` is in `LLMOPS_CRED_<N'>_<K>`, where `N'` is `N`
/// upper-cased with every character other than A-Z and 0-9 replaced by `_`. The
/// operator sets them ([`credential_env_var`] for each of [`CREDENTIAL_KEYS`]); the
/// store in the trainer and server reads them.
pub mod credentials {
    /// The start of every credential variable.
    pub const ENV_PREFIX: &str = "LLMOPS_CRED_";

    /// The Secret keys the operator passes through, covering S3, GCS, Azure and
    /// the Hugging Face Hub (`HF_TOKEN`, for `hf://` URIs). The store reads the
    /// same names as plain variables when no Secret is named.
    pub const CREDENTIAL_KEYS: [&str; 10] = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_ENDPOINT",
        "AWS_ALLOW_HTTP",
        "GOOGLE_SERVICE_ACCOUNT_KEY",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "HF_TOKEN",
    ];

    /// `LLMOPS_CRED_<SECRET>_`: the prefix of the variables carrying the keys of
    /// the Secret `secret`, including the trailing `_`
    /// (`s3-creds` → `LLMOPS_CRED_S3_CREDS_`).
    pub fn credential_env_prefix(secret: &str) -> String {
        let mut prefix = String::with_capacity(ENV_PREFIX.len() + secret.len() + 1);
        prefix.push_str(ENV_PREFIX);
        prefix.extend(secret.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        }));
        prefix.push('_');
        prefix
    }

    /// `LLMOPS_CRED_<SECRET>_<KEY>`: the variable carrying `key` of the Secret
    /// `secret`.
    pub fn credential_env_var(secret: &str, key: &str) -> String {
        credential_env_prefix(secret) + key
    }
}

/// Paths inside the pods.
pub mod path {
    /// Where the operator mounts the claim of every `pvc://<claim>/<path>` URI a
    /// pod uses, as `<PVC_ROOT>/<claim>`; passed as [`crate::env::PVC_ROOT`]. The
    /// store uses it when that variable is not set.
    pub const PVC_ROOT: &str = "/mnt/pvc";

    /// Where the operator mounts a ModelDeployment's `spec.server.modelCache`
    /// claim on its server pods; passed as [`crate::env::MODEL_CACHE_DIR`].
    pub const MODEL_CACHE: &str = "/var/cache/llmops/models";

    /// The directory of the files the operator mounts for the trainer.
    pub const CONFIG_DIR: &str = "/etc/llmops";

    /// The key of the resource file in the ConfigMap the operator writes for a
    /// trainer Job (the resolved resource as YAML).
    pub const RESOURCE_KEY: &str = "resource.yaml";

    /// Where the operator mounts the resource file ([`RESOURCE_KEY`] in
    /// [`CONFIG_DIR`]) and passes it as `trainer <command> --resource`; the
    /// trainer reads it.
    pub const RESOURCE_PATH: &str = "/etc/llmops/resource.yaml";

    /// Where the operator mounts a Dataset's ConfigMap sources, source `i` at
    /// `<SOURCES_DIR>/<i>`; passed as [`crate::env::SOURCES_DIR`]. `trainer
    /// prepare` uses it when that variable is not set.
    pub const SOURCES_DIR: &str = "/etc/llmops/sources";

    /// Where the trainer writes its termination message: Kubernetes' default
    /// `terminationMessagePath`, which the operator leaves as it is and reads back
    /// from the pod's status.
    pub const TERMINATION_MESSAGE: &str = "/dev/termination-log";
}

/// Exit statuses of the trainer that the operator's pod failure policy acts on.
pub mod exit {
    /// SIGTERM was handled and the checkpoint saved (128 + 15, as a shell reports
    /// a process killed by SIGTERM). Exited with by the trainer; the operator
    /// retries the pod without counting it as a failure.
    pub const INTERRUPTED: u8 = 143;

    /// An error no restart can fix: invalid input (the spec, the data, a foreign
    /// checkpoint, divergence) or a rejected command line (the status of a usage
    /// error). Exited with by the trainer; the operator fails the Job at once.
    pub const INVALID: u8 = 2;
}

/// Pod (and Job) annotation holding the W3C `traceparent` of the object
/// generation that created the pod; the operator sets it, [`env::TRACEPARENT`]
/// reads it through the downward API.
pub const TRACEPARENT_ANNOTATION: &str = "llmops.dev/traceparent";

/// The server-side-apply field manager of everything the operator writes (its
/// children and the operator's part of each status); also the children's
/// `app.kubernetes.io/managed-by` label.
pub const OPERATOR_FIELD_MANAGER: &str = "llmops-operator";

/// The server-side-apply field manager of the trainer's status writes (progress
/// and stats), so they never conflict with the operator's.
pub const TRAINER_FIELD_MANAGER: &str = "llmops-trainer";

/// The port the server listens on. The operator passes it as `server --port` and
/// exposes it as the container's `http` port; the server listens on it by
/// default.
pub const SERVER_PORT: u16 = 8000;

/// The port rank 0 of a multi-pod training run listens on. The operator passes it
/// as [`env::MASTER_PORT`] and exposes it on the workers' Service; the trainer
/// uses it when the variable is not set.
pub const MASTER_PORT: u16 = 29500;

#[cfg(test)]
mod tests {
    use super::credentials::{credential_env_prefix, credential_env_var};
    use super::path;

    #[test]
    fn credential_variables_upper_case_and_replace_non_alphanumerics() {
        assert_eq!(credential_env_prefix("s3-creds"), "LLMOPS_CRED_S3_CREDS_");
        assert_eq!(
            credential_env_prefix("s3-creds.v2"),
            "LLMOPS_CRED_S3_CREDS_V2_"
        );
        assert_eq!(credential_env_prefix("a.b_c9"), "LLMOPS_CRED_A_B_C9_");
        assert_eq!(
            credential_env_var("gcs", "GOOGLE_SERVICE_ACCOUNT_KEY"),
            "LLMOPS_CRED_GCS_GOOGLE_SERVICE_ACCOUNT_KEY"
        );
    }

    #[test]
    fn mounted_files_are_below_the_config_dir() {
        assert_eq!(
            path::RESOURCE_PATH,
            format!("{}/{}", path::CONFIG_DIR, path::RESOURCE_KEY)
        );
        assert_eq!(path::SOURCES_DIR, format!("{}/sources", path::CONFIG_DIR));
    }
}
