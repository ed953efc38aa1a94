//! Which `config.json` keys are understood. Anything else is an error: an unknown key
//! may change the math in a way this crate would silently ignore.

/// Keys that every `transformers` config may carry and that do not change the
/// forward pass of a causal LM (metadata, tokenizer ids, legacy generation defaults).
pub(super) const GENERIC_KEYS: &[&str] = &[
    "_name_or_path",
    "_attn_implementation_autoset",
    "add_cross_attention",
    "architectures",
    "bad_words_ids",
    "begin_suppress_tokens",
    "bos_token_id",
    "chunk_size_feed_forward",
    "cross_attention_hidden_size",
    "decoder_start_token_id",
    "diversity_penalty",
    "do_sample",
    "dtype",
    "early_stopping",
    "encoder_no_repeat_ngram_size",
    "eos_token_id",
    "exponential_decay_length_penalty",
    "finetuning_task",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "id2label",
    "initializer_range",
    "is_decoder",
    "is_encoder_decoder",
    "label2id",
    "length_penalty",
    "max_length",
    "min_length",
    "model_type",
    "no_repeat_ngram_size",
    "num_beam_groups",
    "num_beams",
    "num_return_sequences",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "pad_token_id",
    "prefix",
    "problem_type",
    "pruned_heads",
    "remove_invalid_values",
    "repetition_penalty",
    "return_dict",
    "return_dict_in_generate",
    "sep_token_id",
    "suppress_tokens",
    "task_specific_params",
    "temperature",
    "tf_legacy_loss",
    "tie_encoder_decoder",
    "tie_word_embeddings",
    "tokenizer_class",
    "top_k",
    "top_p",
    "torch_dtype",
    "torchscript",
    "transformers_version",
    "typical_p",
    "use_bfloat16",
    "use_cache",
];

pub(super) const GPT2_KEYS: &[&str] = &[
    "activation_function",
    "attn_pdrop",
    "embd_pdrop",
    "layer_norm_epsilon",
    // Legacy alias of n_positions kept by old checkpoints; the weights decide.
    "n_ctx",
    "n_embd",
    "n_head",
    "n_inner",
    "n_layer",
    "n_positions",
    // Only changes the order of float operations, not the function.
    "reorder_and_upcast_attn",
    "resid_pdrop",
    "scale_attn_by_inverse_layer_idx",
    "scale_attn_weights",
    // Sequence-summary head of GPT2DoubleHeadsModel; unused by the causal LM.
    "summary_activation",
    "summary_first_dropout",
    "summary_proj_to_labels",
    "summary_type",
    "summary_use_proj",
    "vocab_size",
];

/// Qwen2's keys besides Llama's. Its sliding-window settings are read to refuse
/// them when on.
pub(super) const QWEN2_KEYS: &[&str] = &[
    "layer_types",
    "max_window_layers",
    "sliding_window",
    "use_sliding_window",
];

/// Mistral's keys besides Llama's.
pub(super) const MISTRAL_KEYS: &[&str] = &["sliding_window"];

pub(super) const LLAMA_KEYS: &[&str] = &[
    "attention_bias",
    "attention_dropout",
    "head_dim",
    "hidden_act",
    "hidden_size",
    "intermediate_size",
    "max_position_embeddings",
    "mlp_bias",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    // Tensor-parallel slicing used at pretraining time; mathematically a no-op.
    "pretraining_tp",
    "rms_norm_eps",
    "rope_parameters",
    "rope_scaling",
    "rope_theta",
    "vocab_size",
];
