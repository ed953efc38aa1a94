use std::collections::BTreeMap;

use llmops_crds::dataset::{DatasetStats, DatasetType};
use serde::{Deserialize, Serialize};

/// Bumped whenever readers would misread an older layout.
pub const FORMAT_VERSION: u32 = 1;
/// How token ids are stored in `.bin` shards.
pub const TOKEN_ENCODING: &str = "u32le";

/// `manifest.json` of a dataset artifact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format_version: u32,
    /// The Dataset object that produced the artifact.
    pub dataset: DatasetRef,
    #[serde(rename = "type")]
    pub kind: DatasetType,
    pub sequence_length: u32,
    pub vocab_size: u32,
    pub eos_id: u32,
    pub pad_id: u32,
    /// Always [`TOKEN_ENCODING`].
    pub token_encoding: String,
    /// Whether every shard has a `.mask` file (instruction data, unpacked data).
    pub masks: bool,
    /// The tokenizer file, relative to the artifact.
    pub tokenizer: String,
    /// `train`, `validation` and `test`, always all three.
    pub splits: BTreeMap<String, SplitEntry>,
    pub stats: DatasetStats,
    /// PII redactions by kind (`stats.redactions` is their sum).
    pub redactions: RedactionCounts,
    /// `sha256:<hex>` over every other file of the artifact (see `llmops-store`).
    pub digest: String,
}

/// Identity of the producing Dataset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// One split.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SplitEntry {
    pub sequences: u64,
    /// Document tokens (including EOS) that went into the split, before windowing.
    pub tokens: u64,
    pub shards: Vec<ShardEntry>,
}

/// One shard file (and its mask).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardEntry {
    pub path: String,
    pub sequences: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_sha256: Option<String>,
}

/// PII redactions by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedactionCounts {
    pub email: u64,
    pub phone: u64,
    pub ipv4: u64,
    pub card: u64,
}
