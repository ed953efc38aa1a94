//! `Dataset`: collect, clean, deduplicate, tokenize, segment and label a corpus into
//! token shards that PretrainJobs and FineTunes train on.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{Artifact, Conditions, LocalObjectRef, OutputSpec, SecretRef};

/// A corpus prepared for training. The operator runs `trainer prepare` on it and
/// records the resulting token shards as `status.artifact`.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "llmops.dev",
    version = "v1alpha1",
    kind = "Dataset",
    namespaced,
    status = "DatasetStatus",
    shortname = "dset",
    category = "llmops",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Docs","type":"integer","jsonPath":".status.stats.documentsOut"}"#,
    printcolumn = r#"{"name":"Tokens","type":"integer","jsonPath":".status.stats.trainTokens"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'instruction' || !has(self.labeling)")
    .message("labeling applies only to type: instruction")
    .field_path(".labeling"))]
#[x_kube(validation = Rule::new("self.type == 'pretraining' || has(self.labeling)")
    .message("type: instruction needs labeling (a template with {prompt})")
    .field_path(".labeling"))]
pub struct DatasetSpec {
    /// What the data is for: raw text for pretraining, or prompt/response pairs.
    #[serde(rename = "type", default)]
    pub kind: DatasetType,
    /// Where the documents come from; all sources are concatenated in order.
    #[schemars(length(min = 1, max = 64))]
    pub sources: Vec<Source>,
    /// Cleaning, filtering, deduplication and redaction.
    #[serde(default)]
    pub preprocessing: Preprocessing,
    /// The tokenizer: trained on this corpus or reused.
    pub tokenizer: TokenizerSpec,
    /// How token streams are cut into training sequences.
    #[serde(default)]
    pub segmentation: Segmentation,
    /// Prompt/response formatting for instruction data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labeling: Option<Labeling>,
    /// Held-out fractions.
    #[serde(default)]
    pub split: Split,
    /// Where the prepared shards are written.
    #[serde(default)]
    pub output: OutputSpec,
    /// Seconds preparation may take, retries included, before its pod is stopped
    /// and the Dataset is Stalled. Defaults to 86400 (24 hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// Size limit of the prepare pod's scratch space (`/tmp`): spill files, and
    /// the shards staged before they are uploaded to an object store. A pod
    /// writing more is evicted. A whole number with an optional unit, e.g.
    /// `200Gi`. Defaults to 100Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub ephemeral_storage: Option<String>,
}

/// What a dataset is for.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum DatasetType {
    /// Raw text; every token is a training target.
    #[default]
    Pretraining,
    /// Prompt/response records; prompt tokens can be masked out of the loss.
    Instruction,
}

/// One source of documents. Set exactly one location field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "[has(self.http), has(self.objectStore), has(self.inline), has(self.configMap), has(self.pvc)].filter(x, x).size() == 1"
).message("set exactly one of http, objectStore, inline, configMap or pvc"))]
pub struct Source {
    /// An http(s) URL, optionally checked against a sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    /// An object or prefix in S3, GCS or Azure Blob storage, or a file or folder of
    /// a Hugging Face Hub repository (`hf://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<ObjectStoreSource>,
    /// Documents written in the manifest itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<InlineSource>,
    /// A key of a ConfigMap in this namespace, mounted into the trainer pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapSource>,
    /// A file or directory on a PersistentVolumeClaim, mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    /// How to read records from the bytes. Defaults to plain text.
    #[serde(default)]
    pub format: Format,
    /// Decompression; `auto` recognises gzip by its magic bytes.
    #[serde(default)]
    pub compression: Compression,
}

/// An http(s) source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    /// The URL to download.
    #[schemars(regex(pattern = r"^https?://.+"))]
    pub url: String,
    /// Expected sha256 (hex) of the downloaded bytes; a mismatch fails the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
}

/// An object-store source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreSource {
    /// `s3://bucket/key`, `gs://bucket/key` or `az://container/key`; a URI ending in
    /// `/` is a prefix and every object under it is read in name order. Or a file or
    /// folder of a Hugging Face Hub repository,
    /// `hf://datasets/<org>/<dataset>[@<revision>]/<path>` (a folder's files are read
    /// in name order; `hf://<org>/<model>/...` reads a model repository).
    #[schemars(regex(pattern = r"^((s3|gs|az)://[^/]+/.*|hf://.+)$"))]
    pub uri: String,
    /// Secret holding the store's credentials (see `output.credentialsSecretRef`);
    /// for `hf://`, the Hub token in key `HF_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// Documents in the manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct InlineSource {
    /// The content, read with `format` like a downloaded file.
    #[schemars(length(min = 1, max = 262144))]
    pub content: String,
}

/// A ConfigMap key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSource {
    /// ConfigMap name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A path on a PersistentVolumeClaim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// PersistentVolumeClaim name.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// File or directory inside the volume; a directory is read in name order.
    #[serde(default = "root_path")]
    #[schemars(length(max = 4096))]
    #[x_kube(validation = Rule::new("!self.contains('..')").message("path must not contain '..'"))]
    pub path: String,
}

fn root_path() -> String {
    "/".into()
}

/// How records are read. Set at most one of `jsonl`, `csv` and `parquet`; none
/// means text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.jsonl), has(self.csv), has(self.parquet)].filter(x, x).size() <= 1").message("set at most one of jsonl, csv or parquet"))]
pub struct Format {
    /// Plain text: documents separated by `separator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextFormat>,
    /// One JSON object per line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonl: Option<RecordFields>,
    /// Comma-separated values with a header row naming the columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvFormat>,
    /// Apache Parquet (the format of Hugging Face Hub datasets): string columns
    /// named as JSONL's fields; any compression Parquet itself uses (snappy,
    /// zstd, lz4, gzip), with `compression` left at `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parquet: Option<RecordFields>,
}

/// Plain-text options.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TextFormat {
    /// How documents are separated.
    #[serde(default)]
    pub separator: TextSeparator,
}

/// Document boundaries in plain text.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum TextSeparator {
    /// Blank lines separate documents.
    #[default]
    BlankLine,
    /// Every line is a document.
    Line,
    /// The whole file is one document.
    File,
}

/// Which fields of a record hold the text. Pretraining data uses `textField`;
/// instruction data uses `promptField` and `responseField`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordFields {
    /// Field holding the document text (pretraining).
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// Field holding the prompt (instruction).
    #[serde(default = "default_prompt_field")]
    pub prompt_field: String,
    /// Field holding the response (instruction).
    #[serde(default = "default_response_field")]
    pub response_field: String,
}

impl Default for RecordFields {
    fn default() -> Self {
        Self {
            text_field: default_text_field(),
            prompt_field: default_prompt_field(),
            response_field: default_response_field(),
        }
    }
}

fn default_text_field() -> String {
    "text".into()
}
fn default_prompt_field() -> String {
    "prompt".into()
}
fn default_response_field() -> String {
    "response".into()
}

/// CSV options.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CsvFormat {
    /// Column names to read, as for JSONL fields.
    #[serde(flatten)]
    pub fields: RecordFields,
    /// Field delimiter, one character.
    #[serde(default = "default_delimiter")]
    #[schemars(length(min = 1, max = 1))]
    pub delimiter: String,
}

fn default_delimiter() -> String {
    ",".into()
}

/// Decompression of a source.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Compression {
    /// gzip when the bytes start with its magic number, else none.
    #[default]
    Auto,
    /// Not compressed.
    None,
    /// gzip.
    Gzip,
}

/// Cleaning and filtering, applied in this order: normalisation, PII redaction,
/// length filters, exact dedup, near-duplicate dedup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preprocessing {
    /// Text normalisation.
    #[serde(default)]
    pub normalization: Normalization,
    /// Length filters on normalised documents.
    #[serde(default)]
    pub filters: Filters,
    /// Duplicate removal.
    #[serde(default)]
    pub dedup: Dedup,
    /// Personal data redaction.
    #[serde(default)]
    pub pii: Pii,
}

/// Text normalisation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Normalization {
    /// Unicode normal form.
    #[serde(default)]
    pub unicode: UnicodeForm,
    /// Lowercase all text.
    #[serde(default)]
    pub lowercase: bool,
    /// Remove punctuation characters.
    #[serde(default)]
    pub strip_punctuation: bool,
    /// Collapse runs of spaces and tabs, and of more than two newlines; trim.
    #[serde(default = "yes")]
    pub collapse_whitespace: bool,
    /// Remove control characters other than newline and tab.
    #[serde(default = "yes")]
    pub remove_control_characters: bool,
}

impl Default for Normalization {
    fn default() -> Self {
        Self {
            unicode: UnicodeForm::default(),
            lowercase: false,
            strip_punctuation: false,
            collapse_whitespace: true,
            remove_control_characters: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// Unicode normal form.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum UnicodeForm {
    /// Canonical composition.
    #[default]
    NFC,
    /// Compatibility composition (folds ligatures, full-width forms, ...).
    NFKC,
    /// Leave text as is.
    None,
}

/// Length filters, in characters after normalisation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.maxChars) || self.minChars <= self.maxChars")
    .message("minChars must not exceed maxChars")
    .field_path(".minChars"))]
pub struct Filters {
    /// Drop documents shorter than this.
    #[serde(default = "one_i64")]
    #[schemars(range(min = 0))]
    pub min_chars: i64,
    /// Drop documents longer than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_chars: Option<i64>,
}

impl Default for Filters {
    fn default() -> Self {
        Self {
            min_chars: 1,
            max_chars: None,
        }
    }
}

fn one_i64() -> i64 {
    1
}

/// Duplicate removal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dedup {
    /// Drop documents whose normalised text is identical to an earlier one.
    #[serde(default = "yes")]
    pub exact: bool,
    /// Drop documents whose estimated Jaccard similarity to an earlier one reaches
    /// the threshold (MinHash with locality-sensitive hashing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub near_duplicate: Option<NearDuplicate>,
}

impl Default for Dedup {
    fn default() -> Self {
        Self {
            exact: true,
            near_duplicate: None,
        }
    }
}

/// MinHash-LSH near-duplicate detection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NearDuplicate {
    /// Jaccard similarity at or above which two documents are duplicates.
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 0.05, max = 1.0))]
    pub threshold: f64,
    /// Number of MinHash permutations; more is more accurate and slower.
    #[serde(default = "default_permutations")]
    #[schemars(range(min = 16, max = 1024))]
    pub permutations: i32,
    /// Words per shingle.
    #[serde(default = "default_shingle_size")]
    #[schemars(range(min = 1, max = 32))]
    pub shingle_size: i32,
}

fn default_threshold() -> f64 {
    0.8
}
fn default_permutations() -> i32 {
    128
}
fn default_shingle_size() -> i32 {
    5
}

/// Personal data redaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pii {
    /// Kinds of personal data replaced by a placeholder such as `<EMAIL>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub redact: Vec<PiiKind>,
}

/// A kind of personal data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PiiKind {
    /// Email addresses.
    Email,
    /// Phone numbers.
    Phone,
    /// IPv4 addresses.
    Ipv4,
    /// Payment-card-like numbers (13–19 digits passing the Luhn check).
    Card,
}

/// The tokenizer. Set exactly one of `train`, `datasetRef` or `uri`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.train), has(self.datasetRef), has(self.uri)].filter(x, x).size() == 1")
    .message("set exactly one of train, datasetRef or uri"))]
pub struct TokenizerSpec {
    /// Train a tokenizer on this corpus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TokenizerTraining>,
    /// Reuse the tokenizer of another Dataset in this namespace (for example the one
    /// a base model was pretrained on), so token ids match the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_ref: Option<LocalObjectRef>,
    /// Reuse a `tokenizer.json`, given as its URI or the URI of a model directory
    /// containing one (`hf://<org>/<model>[@<revision>]` included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(https?|s3|gs|az|file|pvc|hf)://.+"))]
    pub uri: Option<String>,
}

/// Tokenizer training.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenizerTraining {
    /// The algorithm.
    #[serde(rename = "type", default)]
    pub kind: TokenizerType,
    /// Vocabulary size including special tokens.
    #[schemars(range(min = 300, max = 1048576))]
    pub vocab_size: i32,
    /// Minimum pair frequency for a merge.
    #[serde(default = "default_min_frequency")]
    #[schemars(range(min = 1))]
    pub min_frequency: i32,
    /// Special tokens added first, in order. The first is the end-of-sequence token.
    #[serde(default = "default_special_tokens")]
    #[schemars(length(min = 1, max = 256))]
    pub special_tokens: Vec<String>,
}

fn default_min_frequency() -> i32 {
    2
}
fn default_special_tokens() -> Vec<String> {
    vec!["<|endoftext|>".into(), "<|pad|>".into()]
}

/// Tokenizer algorithm.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum TokenizerType {
    /// Byte-level byte-pair encoding (as GPT-2).
    #[default]
    Bpe,
}

/// Segmentation of token streams into training sequences.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.stride) || self.stride <= self.sequenceLength")
    .message("stride must not exceed sequenceLength")
    .field_path(".stride"))]
pub struct Segmentation {
    /// Tokens per training sequence.
    #[serde(default = "default_sequence_length")]
    #[schemars(range(min = 8, max = 131072))]
    pub sequence_length: i32,
    /// Tokens between the starts of consecutive windows; less than
    /// `sequenceLength` makes windows overlap. Defaults to `sequenceLength`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub stride: Option<i32>,
    /// Pack several documents into one sequence, separated by EOS; otherwise each
    /// document starts a new sequence and the tail is padded.
    #[serde(default = "yes")]
    pub pack: bool,
    /// Append the end-of-sequence token after every document.
    #[serde(default = "yes")]
    pub add_eos: bool,
}

impl Default for Segmentation {
    fn default() -> Self {
        Self {
            sequence_length: default_sequence_length(),
            stride: None,
            pack: true,
            add_eos: true,
        }
    }
}

fn default_sequence_length() -> i32 {
    1024
}

/// Prompt/response formatting for instruction data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Labeling {
    /// Prompt template; `{prompt}` is replaced by the prompt text and the response
    /// follows the rendered template.
    #[serde(default = "default_template")]
    #[schemars(length(min = 1, max = 8192))]
    #[x_kube(validation = Rule::new("self.contains('{prompt}')").message("template must contain {prompt}"))]
    pub template: String,
    /// Exclude prompt tokens from the loss (only response tokens are targets).
    #[serde(default = "yes")]
    pub mask_prompt: bool,
}

fn default_template() -> String {
    "### Question:\n{prompt}\n### Answer:\n".into()
}

/// Held-out splits, chosen per document with a seeded hash so the same input
/// always splits the same way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.validation + self.test < 1.0")
    .message("validation + test must be less than 1")
    .field_path(".validation"))]
pub struct Split {
    /// Fraction of documents held out for validation.
    #[serde(default = "default_validation")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub validation: f64,
    /// Fraction of documents held out for testing.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub test: f64,
    /// Seed of the split.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub seed: i64,
}

impl Default for Split {
    fn default() -> Self {
        Self {
            validation: default_validation(),
            test: 0.0,
            seed: 0,
        }
    }
}

fn default_validation() -> f64 {
    0.05
}

/// Observed state of a Dataset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
    /// Counts from preparation (written live by the trainer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<DatasetStats>,
    /// What the operator records of the preparation.
    #[serde(flatten)]
    pub operator: DatasetOperatorStatus,
}

/// The fields of a Dataset's status that the operator writes (besides the
/// generation and conditions every status has). Flattened: in the API they sit
/// directly in `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetOperatorStatus {
    /// The prepared shards, once Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// The Job preparing the current generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<LocalObjectRef>,
    /// When preparation of the current generation started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// When preparation of the current generation finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// Counts from preparation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStats {
    /// Documents read from the sources.
    #[serde(default)]
    pub documents_in: i64,
    /// Documents kept after cleaning and dedup.
    #[serde(default)]
    pub documents_out: i64,
    /// Documents dropped as exact duplicates.
    #[serde(default)]
    pub exact_duplicates: i64,
    /// Documents dropped as near duplicates.
    #[serde(default)]
    pub near_duplicates: i64,
    /// Documents dropped by the length filters.
    #[serde(default)]
    pub filtered: i64,
    /// PII spans redacted.
    #[serde(default)]
    pub redactions: i64,
    /// Tokens in the training split.
    #[serde(default)]
    pub train_tokens: i64,
    /// Tokens in the validation split.
    #[serde(default)]
    pub validation_tokens: i64,
    /// Tokens in the test split.
    #[serde(default)]
    pub test_tokens: i64,
    /// Training sequences across all splits.
    #[serde(default)]
    pub sequences: i64,
    /// Shard files written.
    #[serde(default)]
    pub shards: i64,
    /// Tokenizer vocabulary size.
    #[serde(default)]
    pub vocab_size: i64,
    /// Bytes read from the sources.
    #[serde(default)]
    pub bytes_in: i64,
}
