//! forja: the orchestrator. Parses pipeline files ([`pipeline`]) into checked plans
//! and runs them with content-hash caching ([`run`]), training stages as local
//! ranks when asked ([`launch`]); `forja inspect` looks into artifacts ([`inspect`]).

pub mod card;
pub mod inspect;
pub mod launch;
pub mod pipeline;
pub mod reference;
pub mod run;
pub mod sweep;

use forja_core::stage::DynStage;

/// Every stage kind forja knows.
pub fn registry() -> Vec<&'static dyn DynStage> {
    let mut stages = Vec::new();
    stages.extend_from_slice(forja_data::STAGES);
    stages.extend_from_slice(forja_pretrain::STAGES);
    stages.extend_from_slice(forja_eval::STAGES);
    stages.extend_from_slice(forja_sft::STAGES);
    stages.extend_from_slice(forja_rlhf::STAGES);
    stages
}
