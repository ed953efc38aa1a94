//! The dataset's tokenizer: a byte-level BPE trained on the cleaned corpus with
//! HF `tokenizers`, or an existing `tokenizer.json` reused as is.

use llmops_crds::dataset::TokenizerTraining;
use llmops_store::{Credentials, Store, StoreError};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    Tokenizer, TokenizerBuilder,
};

use super::PrepareError;

/// At most this much text (bytes) trains the tokenizer: BPE merges stabilise long
/// before that, and the word-count table stays bounded on huge corpora.
pub const TRAINING_SAMPLE_BYTES: u64 = 256 << 20;

/// End-of-sequence tokens of common tokenizers, most specific first.
const EOS_NAMES: [&str; 6] = [
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
    "<eos>",
    "<|im_end|>",
    "[SEP]",
];
/// Padding tokens of common tokenizers.
const PAD_NAMES: [&str; 4] = ["<|pad|>", "<pad>", "[PAD]", "<|padding|>"];

fn tk_err(e: impl std::fmt::Display) -> PrepareError {
    PrepareError::Tokenizer(e.to_string())
}

/// Trains a GPT-2-style byte-level BPE on `texts`. Special tokens get the first ids.
pub fn train<I>(texts: I, spec: &TokenizerTraining) -> Result<Tokenizer, PrepareError>
where
    I: Iterator<Item = String> + Send,
{
    let specials: Vec<AddedToken> = spec
        .special_tokens
        .iter()
        .map(|t| AddedToken::from(t.clone(), true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(usize::try_from(spec.vocab_size).unwrap_or(0))
        .min_frequency(u64::try_from(spec.min_frequency).unwrap_or(1))
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let mut tokenizer = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_normalizer(None)
    .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false).into()))
    .with_post_processor(Some(ByteLevel::default().trim_offsets(false).into()))
    .with_decoder(Some(ByteLevel::default().into()))
    .build()
    .map_err(tk_err)?;
    tokenizer.train(&mut trainer, texts).map_err(tk_err)?;
    Ok(tokenizer.into())
}

/// Loads `tokenizer.json` from `uri`: the file itself, or a model directory that
/// contains one.
pub async fn load(uri: &str, credentials: &Credentials) -> Result<Tokenizer, PrepareError> {
    let bytes = if uri.ends_with(".json") {
        Store::open(uri, credentials)?.get_bytes("").await?
    } else {
        let store = Store::open(uri, credentials)?;
        match store.get_bytes("tokenizer.json").await {
            Err(StoreError::NotFound { .. }) => {
                return Err(PrepareError::Tokenizer(format!(
                    "no tokenizer.json at {uri}; give the URI of the file or of a model directory containing it"
                )));
            }
            other => other?,
        }
    };
    Tokenizer::from_bytes(&bytes)
        .map_err(|e| PrepareError::Tokenizer(format!("invalid tokenizer.json at {uri}: {e}")))
}

/// `(eos, pad)` ids. A trained tokenizer uses its first special token as EOS and
/// its second (if any) as padding; a reused one is searched for the usual names.
pub fn special_ids(
    tokenizer: &Tokenizer,
    trained: Option<&TokenizerTraining>,
) -> Result<(u32, u32), PrepareError> {
    let id = |t: &str| tokenizer.token_to_id(t);
    if let Some(spec) = trained {
        let eos = spec.special_tokens.first().and_then(|t| id(t));
        let eos = eos.ok_or_else(|| {
            PrepareError::InvalidSpec("tokenizer.train.specialTokens must not be empty".into())
        })?;
        let pad = spec
            .special_tokens
            .get(1)
            .and_then(|t| id(t))
            .unwrap_or(eos);
        return Ok((eos, pad));
    }
    let eos = EOS_NAMES.iter().find_map(|t| id(t)).ok_or_else(|| {
        PrepareError::Tokenizer(format!(
            "the tokenizer has none of the end-of-sequence tokens {EOS_NAMES:?}"
        ))
    })?;
    let pad = PAD_NAMES.iter().find_map(|t| id(t)).unwrap_or(eos);
    Ok((eos, pad))
}

/// Encodes a batch without special tokens, in parallel.
pub fn encode_batch(
    tokenizer: &Tokenizer,
    texts: Vec<String>,
) -> Result<Vec<Vec<u32>>, PrepareError> {
    let encodings = tokenizer.encode_batch_fast(texts, false).map_err(tk_err)?;
    Ok(encodings
        .into_iter()
        .map(|e| e.get_ids().to_vec())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(vocab: i32) -> TokenizerTraining {
        TokenizerTraining {
            kind: Default::default(),
            vocab_size: vocab,
            min_frequency: 1,
            special_tokens: vec!["<|endoftext|>".into(), "<|pad|>".into()],
        }
    }

    fn corpus() -> Vec<String> {
        (0..200)
            .map(|i| format!("the quick brown fox {i} jumps over the lazy dog {}", i * 7))
            .collect()
    }

    #[test]
    fn trains_to_vocab_size_with_specials_first() {
        let tk = train(corpus().into_iter(), &spec(300)).unwrap();
        assert_eq!(tk.get_vocab_size(true), 300);
        assert_eq!(special_ids(&tk, Some(&spec(300))).unwrap(), (0, 1));
        let ids = encode_batch(&tk, vec!["the quick brown fox".into()]).unwrap();
        let text = tk.decode(&ids[0], false).unwrap();
        assert_eq!(text, "the quick brown fox");
    }

    #[test]
    fn training_is_deterministic() {
        let a = train(corpus().into_iter(), &spec(320))
            .unwrap()
            .to_string(false)
            .unwrap();
        let b = train(corpus().into_iter(), &spec(320))
            .unwrap()
            .to_string(false)
            .unwrap();
        assert_eq!(a, b);
    }
}
