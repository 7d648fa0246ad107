//! Per-language quality profiles (in the manner of FineWeb-2): the values of
//! the rules that depend on the language — stop words, the word splitter, mean
//! word length, the share of words with a letter, the uppercase share and the
//! length rule — chosen by each document's detected language.
//!
//! The shipped profiles (`crates/data/profiles/*.json`) are written by the
//! `calibrate_quality` stage ([`crate::calibrate`]) from reference text, except
//! English, whose profile is datatrove's constants (so English keeps its parity
//! with datatrove). A language without a profile is judged by the
//! language-independent rules only.

use crate::quality::{GopherQualityConfig, WordSplit, GOPHER_STOP_WORDS};
use crate::web::{DocLengthConfig, DocQualityConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::LazyLock;

/// The language-dependent values of the web chain for one language.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LangProfile {
    /// ISO 639-1 code, as [`crate::lang`] reports it.
    pub lang: String,
    /// Where the values come from (reference text, or "datatrove constants").
    pub source: String,
    /// Share of the reference text each threshold keeps.
    pub keep_share: f64,
    /// Reference units measured.
    pub units: usize,
    pub words: WordSplit,
    /// Gopher's stop words for this language.
    pub stop_words: Vec<String>,
    pub min_stop_words: usize,
    pub min_avg_word_length: f64,
    pub max_avg_word_length: f64,
    /// Least share of words that contain a letter (Gopher's `max_non_alpha_words_ratio`).
    pub min_alpha_words_ratio: f64,
    /// Largest uppercase share of letters (`doc_quality`).
    pub max_upper_frac: f64,
    /// The length rule (`doc_length`): fewest characters of clean sentence
    /// lines; `None` leaves it off for this language.
    pub min_clean_chars: Option<usize>,
    /// C4's fewest sentences, the other length rule (`None`: off for this
    /// language; a short paragraph is then judged on its merit).
    pub min_num_sentences: Option<usize>,
}

impl LangProfile {
    /// English: datatrove's and DCLM-tuned constants, exactly the defaults.
    pub fn english() -> Self {
        let g = GopherQualityConfig::default();
        let d = DocQualityConfig::default();
        Self {
            lang: "en".into(),
            source: "datatrove's GopherQualityFilter constants; doc_quality tuned on DCLM's English human labels".into(),
            keep_share: 1.0,
            units: 0,
            words: WordSplit::SpacyEn,
            stop_words: GOPHER_STOP_WORDS.iter().map(|s| s.to_string()).collect(),
            min_stop_words: g.min_stop_words.unwrap_or(0),
            min_avg_word_length: g.min_avg_word_length.unwrap_or(0.0),
            max_avg_word_length: g.max_avg_word_length.unwrap_or(f64::INFINITY),
            min_alpha_words_ratio: g.max_non_alpha_words_ratio.unwrap_or(0.0),
            max_upper_frac: d.max_upper_frac,
            min_clean_chars: DocLengthConfig::default().min_clean_chars,
            min_num_sentences: crate::quality::C4Config::default().min_num_sentences,
        }
    }

    /// The rules with this profile's values (a rule switched off in `rules`
    /// stays off).
    pub fn apply(
        &self,
        q: &mut GopherQualityConfig,
        d: &mut DocQualityConfig,
        len: &mut DocLengthConfig,
        c4: &mut crate::quality::C4Config,
    ) {
        q.words = self.words;
        q.stop_words = self.stop_words.clone();
        q.min_stop_words = q.min_stop_words.map(|_| self.min_stop_words);
        q.min_avg_word_length = q.min_avg_word_length.map(|_| self.min_avg_word_length);
        q.max_avg_word_length = q.max_avg_word_length.map(|_| self.max_avg_word_length);
        q.max_non_alpha_words_ratio = q.max_non_alpha_words_ratio.map(|_| self.min_alpha_words_ratio);
        d.max_upper_frac = self.max_upper_frac;
        len.min_clean_chars = self.min_clean_chars;
        c4.min_num_sentences = c4.min_num_sentences.and(self.min_num_sentences);
    }
}

/// The language-independent rules only: no stop words, no mean word length,
/// no length rule, Unicode words; C4 keeps its line rules but not the
/// terminal-punctuation one (other scripts end sentences otherwise).
pub fn unprofiled(q: &mut GopherQualityConfig, len: &mut DocLengthConfig, c4: &mut crate::quality::C4Config) {
    q.words = WordSplit::Unicode;
    q.min_stop_words = None;
    q.min_avg_word_length = None;
    q.max_avg_word_length = None;
    len.min_clean_chars = None;
    c4.filter_no_terminal_punct = false;
}

/// The shipped profiles, by language.
pub const SHIPPED: [(&str, &str); 6] = [
    ("en", include_str!("../profiles/en.json")),
    ("es", include_str!("../profiles/es.json")),
    ("fr", include_str!("../profiles/fr.json")),
    ("de", include_str!("../profiles/de.json")),
    ("pt", include_str!("../profiles/pt.json")),
    ("it", include_str!("../profiles/it.json")),
];

/// The shipped profiles, parsed.
pub fn shipped() -> &'static BTreeMap<String, LangProfile> {
    static P: LazyLock<BTreeMap<String, LangProfile>> = LazyLock::new(|| {
        SHIPPED
            .iter()
            .map(|(lang, json)| {
                let p: LangProfile = serde_json::from_str(json).unwrap_or_else(|e| panic!("shipped profile {lang}: {e}"));
                (lang.to_string(), p)
            })
            .collect()
    });
    &P
}

/// Profile settings of the web chain.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfilesConfig {
    /// On or off; `None` takes the preset's choice (on for `web`). Off: every
    /// document is judged by the rules as configured (English).
    pub enabled: Option<bool>,
    /// Profile files (`calibrate_quality`'s `profile.json`) that replace or
    /// add to the shipped ones, by their `lang`.
    pub files: Vec<PathBuf>,
}

impl ProfilesConfig {
    /// The shipped profiles, then the given files over them.
    pub fn load(&self) -> anyhow::Result<BTreeMap<String, LangProfile>> {
        let mut all = shipped().clone();
        for f in &self.files {
            let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("profile {}: {e}", f.display()))?;
            let p: LangProfile = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("profile {}: {e}", f.display()))?;
            all.insert(p.lang.clone(), p);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_english_profile_is_datatroves_constants() {
        assert_eq!(shipped()["en"], LangProfile::english());
        for (lang, p) in shipped() {
            assert_eq!(&p.lang, lang);
            assert!(p.stop_words.len() >= 2 && p.min_avg_word_length < p.max_avg_word_length, "{lang}");
        }
    }
}
