//! The dataset artifact format, shared by `trainer prepare` (which writes it) and
//! the training data loaders (which read it).
//!
//! ```text
//! <uri>/manifest.json            written last; its presence marks the artifact complete
//! <uri>/tokenizer.json           HF tokenizers format
//! <uri>/<split>-<nnnnn>.bin      rows of sequenceLength little-endian u32 token ids
//! <uri>/<split>-<nnnnn>.mask     (if manifest.masks) one u8 per token, 1 = target
//! <uri>/.llmops-owner.json       the Dataset the prefix belongs to (hidden: no part of
//!                                the files or the digest)
//! ```

mod manifest;
mod owner;
mod reader;

pub use manifest::{
    DatasetRef, FORMAT_VERSION, Manifest, RedactionCounts, ShardEntry, SplitEntry, TOKEN_ENCODING,
};
pub use owner::owner_of;
pub use reader::{ArtifactError, DatasetArtifact, Sequence, SplitReader};
