//! Feedback on served completions: thumbs up/down go to a `ratings` artifact,
//! a preferred alternative to a `preferences` artifact (prompt, chosen,
//! rejected) that the RLHF stages read. Deployment feeds alignment.
//!
//! The server remembers its recent completions (prompt and texts by id) so
//! feedback needs only the id. Each record is appended by rewriting the
//! artifact atomically: a crash leaves the old file or the new one, never half.

use crate::error::ApiError;
use forja_core::{Artifact, Preference, Rating};
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

pub const RATINGS: &str = "ratings.arrow";
pub const PREFERENCES: &str = "preferences.arrow";
const STAGE: &str = "serve";

/// A served completion, kept for feedback.
#[derive(Debug, Clone)]
pub struct Served {
    /// The prompt as the model saw it (chat: the rendered conversation).
    pub prompt: String,
    /// Text of each choice.
    pub choices: Vec<String>,
    /// `id@hash`.
    pub model: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Thumb {
    Word(String),
    Number(i64),
}

#[derive(Debug, Deserialize)]
pub struct FeedbackRequest {
    /// The completion's id (`cmpl-…` or `chatcmpl-…`).
    pub id: String,
    /// Which choice (default 0).
    pub index: Option<i64>,
    /// `up` / `down` (or 1 / -1).
    pub rating: Option<Thumb>,
    /// A better answer than the completion's.
    pub preferred: Option<String>,
    /// Who judged (default: the API key's label).
    pub annotator: Option<String>,
}

/// What was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Rating,
    Preference,
}

pub struct Feedback {
    dir: PathBuf,
    recent: HashMap<String, Served>,
    order: VecDeque<String>,
    capacity: usize,
    ratings: Vec<Rating>,
    preferences: Vec<Preference>,
}

impl Feedback {
    /// Opens `dir`, keeping what earlier runs recorded there.
    pub fn open(dir: &Path, capacity: usize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating the feedback folder {}: {e}", dir.display()))?;
        let read = |name: &str| dir.join(name).exists().then(|| dir.join(name));
        let ratings = read(RATINGS).map(|p| Rating::read(&p)).transpose()?.unwrap_or_default();
        let preferences = read(PREFERENCES).map(|p| Preference::read(&p)).transpose()?.unwrap_or_default();
        Ok(Self { dir: dir.to_path_buf(), recent: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1), ratings, preferences })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Remembers a completion; the oldest is forgotten past the capacity.
    pub fn remember(&mut self, id: &str, served: Served) {
        if self.recent.insert(id.to_string(), served).is_none() {
            self.order.push_back(id.to_string());
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    /// Records feedback on a remembered completion.
    pub fn record(&mut self, req: &FeedbackRequest, annotator: &str) -> Result<Recorded, ApiError> {
        let served = self.recent.get(&req.id).ok_or_else(|| {
            ApiError::not_found(format!("no completion `{}` among the last {} served by this process", req.id, self.capacity))
                .with_param("id")
        })?;
        let index = req.index.unwrap_or(0);
        let completion = usize::try_from(index).ok().and_then(|i| served.choices.get(i)).ok_or_else(|| {
            ApiError::invalid("index", format!("index must be in [0, {}], got {index}", served.choices.len().saturating_sub(1)))
        })?;
        let annotator = req.annotator.clone().filter(|a| !a.trim().is_empty()).unwrap_or_else(|| annotator.to_string());
        match (&req.rating, &req.preferred) {
            (Some(_), Some(_)) | (None, None) => {
                Err(ApiError::bad_request("give exactly one of `rating` (up / down) and `preferred` (a better answer)"))
            }
            (Some(thumb), None) => {
                let rating = match thumb {
                    Thumb::Word(w) if w == "up" => 1,
                    Thumb::Word(w) if w == "down" => -1,
                    Thumb::Number(1) => 1,
                    Thumb::Number(-1) => -1,
                    _ => return Err(ApiError::invalid("rating", "rating must be \"up\" or \"down\" (or 1 / -1)")),
                };
                let row = Rating {
                    id: req.id.clone(),
                    prompt: served.prompt.clone(),
                    completion: completion.clone(),
                    model: served.model.clone(),
                    rating,
                    annotator,
                };
                self.ratings.push(row);
                if let Err(e) = Rating::write(&self.dir.join(RATINGS), STAGE, "", &self.ratings) {
                    self.ratings.pop();
                    return Err(ApiError::internal(format!("recording the rating: {e}")));
                }
                Ok(Recorded::Rating)
            }
            (None, Some(better)) => {
                if better.trim().is_empty() {
                    return Err(ApiError::invalid("preferred", "preferred is empty"));
                }
                if better == completion {
                    return Err(ApiError::invalid("preferred", "preferred is the completion itself"));
                }
                let row = Preference {
                    prompt: served.prompt.clone(),
                    chosen: better.clone(),
                    rejected: completion.clone(),
                    annotator,
                    source: format!("serve:{}:{}#{index}", served.model, req.id),
                };
                self.preferences.push(row);
                if let Err(e) = Preference::write(&self.dir.join(PREFERENCES), STAGE, "", &self.preferences) {
                    self.preferences.pop();
                    return Err(ApiError::internal(format!("recording the preference: {e}")));
                }
                Ok(Recorded::Preference)
            }
        }
    }
}
