//! What every trainer (an [`Objective`](crate::Objective) and the stage that
//! runs it) shares beyond the loop itself.

use std::path::Path;
use tch::nn;

/// Writes a model folder from the variables (the trainer knows config and
/// tokenizer); an objective's `write_model` calls it.
pub type ModelWriter<'a> = Box<dyn Fn(&nn::VarStore, &Path) -> anyhow::Result<()> + 'a>;
