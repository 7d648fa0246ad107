//! Language identification with `whatlang` (trigram profiles of 69 languages,
//! pure Rust, no model files, fast). Codes are ISO 639-1 where the language has
//! one (`en`, `es`), else whatlang's ISO 639-3 (`cmn` stays `zh`, `pes` → `fa`);
//! `und` when nothing is detected or the confidence is below the threshold.

use serde::{Deserialize, Serialize};

/// Language-ID settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LangConfig {
    /// On or off; `None` takes the preset's choice (on for `web`).
    pub enabled: Option<bool>,
    /// Languages to keep (ISO 639-1 or 639-3 codes); empty keeps every language.
    pub keep: Vec<String>,
    /// Below this confidence (0–1) the language is `und`.
    pub min_confidence: f64,
    /// Characters of the document looked at (its start); 0 for all.
    pub max_chars: usize,
}

impl Default for LangConfig {
    fn default() -> Self {
        Self { enabled: None, keep: Vec::new(), min_confidence: 0.5, max_chars: 2000 }
    }
}

/// The undetermined language.
pub const UNDETERMINED: &str = "und";

impl LangConfig {
    /// The document's language code and whatlang's confidence.
    pub fn identify(&self, text: &str) -> (&'static str, f64) {
        let sample = match self.max_chars {
            0 => text,
            n => text.char_indices().nth(n).map_or(text, |(i, _)| &text[..i]),
        };
        match whatlang::detect(sample) {
            Some(info) if info.confidence() >= self.min_confidence => (iso639_1(info.lang()), info.confidence()),
            Some(info) => (UNDETERMINED, info.confidence()),
            None => (UNDETERMINED, 0.0),
        }
    }

    /// Whether a document in `lang` is kept.
    pub fn keeps(&self, lang: &str) -> bool {
        self.keep.is_empty()
            || self.keep.iter().any(|k| k == lang || whatlang::Lang::from_code(k.as_str()).is_some_and(|l| iso639_1(l) == lang))
    }
}

/// ISO 639-1 code of a whatlang language, or its 639-3 code where 639-1 has none.
pub fn iso639_1(lang: whatlang::Lang) -> &'static str {
    use whatlang::Lang::*;
    match lang {
        Epo => "eo",
        Eng => "en",
        Rus => "ru",
        Cmn => "zh",
        Spa => "es",
        Por => "pt",
        Ita => "it",
        Ben => "bn",
        Fra => "fr",
        Deu => "de",
        Ukr => "uk",
        Kat => "ka",
        Ara => "ar",
        Hin => "hi",
        Jpn => "ja",
        Heb => "he",
        Yid => "yi",
        Pol => "pl",
        Amh => "am",
        Jav => "jv",
        Kor => "ko",
        Nob => "nb",
        Dan => "da",
        Swe => "sv",
        Fin => "fi",
        Tur => "tr",
        Nld => "nl",
        Hun => "hu",
        Ces => "cs",
        Ell => "el",
        Bul => "bg",
        Bel => "be",
        Mar => "mr",
        Kan => "kn",
        Ron => "ro",
        Slv => "sl",
        Hrv => "hr",
        Srp => "sr",
        Mkd => "mk",
        Lit => "lt",
        Lav => "lv",
        Est => "et",
        Tam => "ta",
        Vie => "vi",
        Urd => "ur",
        Tha => "th",
        Guj => "gu",
        Uzb => "uz",
        Pan => "pa",
        Aze => "az",
        Ind => "id",
        Tel => "te",
        Pes => "fa",
        Mal => "ml",
        Ori => "or",
        Mya => "my",
        Nep => "ne",
        Sin => "si",
        Khm => "km",
        Tuk => "tk",
        Aka => "ak",
        Zul => "zu",
        Sna => "sn",
        Afr => "af",
        Lat => "la",
        Slk => "sk",
        Cat => "ca",
        Tgl => "tl",
        Hye => "hy",
        Cym => "cy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_and_spanish_are_told_apart_and_keep_list_accepts_both_code_forms() {
        let cfg = LangConfig::default();
        let (en, _) = cfg.identify("The quick brown fox jumps over the lazy dog while the children watch from the window.");
        let (es, _) =
            cfg.identify("En un lugar de la Mancha, de cuyo nombre no quiero acordarme, no ha mucho tiempo que vivía un hidalgo.");
        assert_eq!((en, es), ("en", "es"));
        let keep = LangConfig { keep: vec!["eng".into(), "es".into()], ..LangConfig::default() };
        assert!(keep.keeps("en") && keep.keeps("es") && !keep.keeps("fr"));
        assert!(LangConfig::default().keeps("fr"));
    }

    #[test]
    fn nothing_to_detect_is_undetermined() {
        assert_eq!(LangConfig::default().identify("1234 5678 !!").0, UNDETERMINED);
    }
}
