//! The llmops trainer: the work behind `trainer <command> --resource FILE`.
//!
//! `prepare` turns a Dataset into token shards ([`prepare`]); the format of those
//! shards and their reader live in [`artifact`]; [`progress`] reports live
//! progress into the resource's status; [`resource`] and [`termination`] are the
//! contract with the operator (the CR file in, one line or a JSON result out).
//! `pretrain` trains a PretrainJob's model from scratch ([`pretrain`]) and
//! `finetune` continues a base model on a FineTune's dataset ([`finetune`]):
//! both are thin commands on the training session in [`train`] (dataset, loop,
//! checkpoints, data parallelism, export). [`text_overlap`] scores generated
//! text against references for fine-tuning's evaluation. `fetch-model` puts a
//! served model at a fixed path for vLLM ([`fetch`]).

pub mod artifact;
pub mod bench;
pub mod fetch;
pub mod finetune;
pub mod prepare;
pub mod pretrain;
pub mod progress;
pub mod resource;
pub mod termination;
pub mod text_overlap;
pub mod train;
