//! The web-text chain of one document: normalisation, length, language,
//! boilerplate lines, Gopher repetition, Gopher quality, C4, PII redaction —
//! each rule configurable and counted. Corpus-level steps (boilerplate line
//! statistics, exact and near-duplicate removal) live in [`crate::stages`].

use crate::clean::normalize;
use crate::lang::LangConfig;
use crate::minhash::MinHashConfig;
use crate::pii::{PiiConfig, PiiCounts};
use crate::profile::{LangProfile, ProfilesConfig};
use crate::quality::{BoilerplateConfig, C4Config, GopherQualityConfig, GopherRepetitionConfig, LineEdits};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

/// A set of defaults for the whole chain.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Only what is switched on explicitly (normalisation, exact de-duplication).
    #[default]
    None,
    /// Web text: language ID, boilerplate, Gopher repetition and quality, C4,
    /// exact and near-duplicate removal, PII redaction — each overridable.
    Web,
}

/// The rules of the chain, each with its own settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    pub lang: LangConfig,
    pub boilerplate: BoilerplateConfig,
    pub repetition: GopherRepetitionConfig,
    pub quality: GopherQualityConfig,
    pub c4: C4Config,
    pub doc_quality: DocQualityConfig,
    pub doc_length: DocLengthConfig,
    pub pii: PiiConfig,
    pub near_dedup: MinHashConfig,
    pub profiles: ProfilesConfig,
    /// The rules of each profiled language, and of the unprofiled ones (built
    /// once, on first use).
    #[serde(skip)]
    pub localized: Arc<OnceLock<Localized>>,
}

/// The rules with each language's profile applied.
#[derive(Debug, Clone, Default)]
pub struct Localized {
    pub by_lang: HashMap<String, Rules>,
    pub unprofiled: Option<Box<Rules>>,
}

/// How a document's language-dependent rules were chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// The rules as configured (profiles off, language ID off, or English).
    AsConfigured,
    /// Its language's profile.
    Profile,
    /// No profile for its language: the language-independent rules only.
    Unprofiled,
}

/// Which rules run, after the preset's defaults and the explicit switches.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Enabled {
    pub lang: bool,
    pub boilerplate: bool,
    pub repetition: bool,
    pub quality: bool,
    pub c4: bool,
    pub doc_quality: bool,
    pub doc_length: bool,
    pub pii: bool,
    pub near_dedup: bool,
    pub profiles: bool,
}

impl Rules {
    /// Resolves every `enabled` switch: explicit value, else the preset's.
    pub fn enabled(&self, preset: Preset) -> Enabled {
        let on = |explicit: Option<bool>| explicit.unwrap_or(preset == Preset::Web);
        Enabled {
            lang: on(self.lang.enabled),
            boilerplate: on(self.boilerplate.enabled),
            repetition: on(self.repetition.enabled),
            quality: on(self.quality.enabled),
            c4: on(self.c4.enabled),
            doc_quality: on(self.doc_quality.enabled),
            doc_length: on(self.doc_length.enabled),
            pii: on(self.pii.enabled),
            near_dedup: on(self.near_dedup.enabled),
            profiles: on(self.profiles.enabled),
        }
    }

    /// The rules for a document in `lang`: English (and any language when
    /// profiles are off) as configured; a profiled language with its profile;
    /// any other, `und` (no language identified with confidence) included,
    /// with the language-independent rules only.
    pub fn for_lang(&self, lang: &str, on: &Enabled) -> (&Rules, Judged) {
        if !on.profiles || !on.lang || lang == "en" && self.profiles.files.is_empty() {
            return (self, Judged::AsConfigured);
        }
        let l = self.localized.get_or_init(|| self.localize(&self.profiles.load().unwrap_or_else(|_| crate::profile::shipped().clone())));
        match (l.by_lang.get(lang), &l.unprofiled) {
            (Some(r), _) => (r, Judged::Profile),
            (None, Some(r)) => (r, Judged::Unprofiled),
            (None, None) => (self, Judged::AsConfigured),
        }
    }

    /// These rules with each profile applied (English's shipped profile is
    /// the defaults: English keeps the rules as configured).
    pub fn localize(&self, profiles: &BTreeMap<String, LangProfile>) -> Localized {
        let bare = || Rules { localized: Arc::default(), ..self.clone() };
        let mut by_lang = HashMap::new();
        for (lang, p) in profiles {
            if lang == "en" && self.profiles.files.is_empty() {
                continue;
            }
            let mut r = bare();
            p.apply(&mut r.quality, &mut r.doc_quality, &mut r.doc_length, &mut r.c4);
            by_lang.insert(lang.clone(), r);
        }
        let mut u = bare();
        crate::profile::unprofiled(&mut u.quality, &mut u.doc_length, &mut u.c4);
        Localized { by_lang, unprofiled: Some(Box::new(u)) }
    }
}

/// What the chain did to one document.
#[derive(Debug)]
pub enum Outcome {
    Kept(Kept),
    /// `rule` is the count key; `reason` the reject's text.
    Dropped {
        rule: String,
        reason: String,
        /// The detected language (`und` when not identified).
        lang: &'static str,
        judged: Judged,
    },
}

/// A document that passed every per-document rule.
#[derive(Debug)]
pub struct Kept {
    pub text: String,
    pub lang: &'static str,
    pub edits: LineEdits,
    pub boilerplate_lines: usize,
    pub pii: PiiCounts,
    pub changed_by_normalization: bool,
    pub judged: Judged,
}

/// A document-level rule.
type Check<'a> = dyn Fn(&str) -> Result<(), crate::quality::Drop> + 'a;

/// Runs the per-document rules on one raw text. `boilerplate` holds the line
/// hashes found boilerplate in this document's source.
pub fn process(raw: &str, min_chars: usize, rules: &Rules, on: &Enabled, boilerplate: &HashSet<u64>) -> Outcome {
    let mut lang = crate::lang::UNDETERMINED;
    let mut judged = Judged::AsConfigured;
    let outcome = judge(raw, min_chars, rules, on, boilerplate, &mut lang, &mut judged);
    match outcome {
        Ok(k) => Outcome::Kept(k),
        Err((rule, reason)) => Outcome::Dropped { rule, reason, lang, judged },
    }
}

fn judge(
    raw: &str,
    min_chars: usize,
    rules: &Rules,
    on: &Enabled,
    boilerplate: &HashSet<u64>,
    lang: &mut &'static str,
    judged: &mut Judged,
) -> Result<Kept, (String, String)> {
    let drop = |rule: &str, reason: String| Err((rule.to_string(), reason));
    let mut text = normalize(raw);
    let changed_by_normalization = text != raw;
    let chars = text.chars().count();
    if chars == 0 {
        return drop("empty", "empty after normalization".into());
    }
    if chars < min_chars {
        return drop("too_short", format!("shorter than min_chars={min_chars} ({chars} chars)"));
    }
    if on.lang {
        let (code, confidence) = rules.lang.identify(&text);
        *lang = code;
        if !rules.lang.keeps(code) {
            return drop("lang", format!("language {code} (confidence {confidence:.2}) not in keep list [{}]", rules.lang.keep.join(", ")));
        }
    }
    let (rules, j) = rules.for_lang(lang, on);
    *judged = j;
    let mut boilerplate_lines = 0;
    if on.boilerplate && !boilerplate.is_empty() {
        let (stripped, removed) = rules.boilerplate.strip(&text, boilerplate);
        if removed > 0 {
            boilerplate_lines = removed;
            text = stripped;
            if text.trim().is_empty() {
                return drop("boilerplate", format!("nothing left after removing {removed} boilerplate lines"));
            }
        }
    }
    let checks: [(bool, &Check); 4] = [
        (on.repetition, &|t| rules.repetition.check(t)),
        (on.quality, &|t| rules.quality.check(t)),
        (on.doc_length, &|t| rules.doc_length.check(t)),
        (on.doc_quality, &|t| rules.doc_quality.check(t)),
    ];
    for (enabled, check) in checks {
        if enabled {
            if let Err(d) = check(&text) {
                return drop(d.rule, format!("{}: {}", d.rule, d.detail));
            }
        }
    }
    let mut edits = LineEdits::default();
    if on.c4 {
        match rules.c4.apply(&text, &mut edits) {
            Ok(t) => text = t,
            Err(d) => return drop(d.rule, format!("{}: {}", d.rule, d.detail)),
        }
        // With the length rules off (a profile's choice), C4's line rules may
        // leave nothing: never keep an empty document.
        if text.trim().is_empty() {
            return drop("c4_no_lines_left", "every line removed by C4's line rules".into());
        }
    }
    let lang = *lang;
    let judged = *judged;
    let mut pii = PiiCounts::default();
    if on.pii {
        let (redacted, counts) = rules.pii.redact(&text);
        if counts.total() > 0 {
            text = redacted.into_owned();
        }
        pii = counts;
    }
    Ok(Kept { text, lang, edits, boilerplate_lines, pii, changed_by_normalization, judged })
}

/// Counts of a run: per rule, per source, line edits, PII, languages and
/// length distributions (characters, in power-of-two bins).
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChainCounts {
    pub read: u64,
    pub kept: u64,
    pub changed_by_normalization: u64,
    /// Rejected documents by rule (including `unreadable`, `exact_duplicate`,
    /// `near_duplicate`).
    pub rejected: BTreeMap<String, u64>,
    /// Per input file: read, kept.
    pub sources: BTreeMap<String, (u64, u64)>,
    /// Lines removed from kept documents, by kind (C4 line rules, boilerplate).
    pub line_edits: BTreeMap<String, u64>,
    pub pii: BTreeMap<String, u64>,
    /// Kept documents by language.
    pub langs: BTreeMap<String, u64>,
    /// Rejected documents by language, then rule (`und` where no language
    /// was identified).
    #[serde(default)]
    pub rejected_by_lang: BTreeMap<String, BTreeMap<String, u64>>,
    /// Documents judged by the language-independent rules only (no profile
    /// for their language), by language.
    #[serde(default)]
    pub unprofiled: BTreeMap<String, u64>,
    /// Document lengths before (as read) and after (as kept), by bin
    /// `floor(log2(chars))`.
    pub length_before: BTreeMap<u32, u64>,
    pub length_after: BTreeMap<u32, u64>,
}

/// The entry of `key`, allocating its `String` only the first time (these
/// counts are updated once per record).
fn bump<'m, V: Default>(map: &'m mut BTreeMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

/// The power-of-two bin of a length.
pub fn length_bin(chars: usize) -> u32 {
    usize::BITS - chars.max(1).leading_zeros() - 1
}

impl ChainCounts {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Adds `other` (counts of another chunk or shard).
    pub fn add(&mut self, other: &ChainCounts) {
        self.read += other.read;
        self.kept += other.kept;
        self.changed_by_normalization += other.changed_by_normalization;
        let add_map = |into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>| {
            for (k, v) in from {
                *into.entry(k.clone()).or_default() += v;
            }
        };
        add_map(&mut self.rejected, &other.rejected);
        add_map(&mut self.line_edits, &other.line_edits);
        add_map(&mut self.pii, &other.pii);
        add_map(&mut self.langs, &other.langs);
        add_map(&mut self.unprofiled, &other.unprofiled);
        for (lang, m) in &other.rejected_by_lang {
            add_map(self.rejected_by_lang.entry(lang.clone()).or_default(), m);
        }
        for (k, (r, kept)) in &other.sources {
            let e = self.sources.entry(k.clone()).or_default();
            e.0 += r;
            e.1 += kept;
        }
        for (into, from) in [(&mut self.length_before, &other.length_before), (&mut self.length_after, &other.length_after)] {
            for (k, v) in from {
                *into.entry(*k).or_default() += v;
            }
        }
    }

    /// Records a document read from `source`.
    pub fn read_one(&mut self, source: &str, raw_chars: usize) {
        self.read += 1;
        bump(&mut self.sources, source).0 += 1;
        *self.length_before.entry(length_bin(raw_chars)).or_default() += 1;
    }

    /// Records a rejection by `rule` of a document in `lang`.
    pub fn reject(&mut self, rule: &str, lang: &str) {
        *bump(&mut self.rejected, rule) += 1;
        *bump(bump(&mut self.rejected_by_lang, lang), rule) += 1;
    }

    /// Records a document judged by the language-independent rules only.
    pub fn judged(&mut self, lang: &str, judged: Judged) {
        if judged == Judged::Unprofiled {
            *bump(&mut self.unprofiled, lang) += 1;
        }
    }

    /// Records what the chain did to a kept candidate (before de-duplication).
    pub fn candidate(&mut self, k: &Kept) {
        self.changed_by_normalization += u64::from(k.changed_by_normalization);
        for (kind, n) in &k.edits.counts {
            *self.line_edits.entry(kind.to_string()).or_default() += *n as u64;
        }
        if k.boilerplate_lines > 0 {
            *self.line_edits.entry("boilerplate".into()).or_default() += k.boilerplate_lines as u64;
        }
        for (kind, n) in k.pii.iter() {
            if n > 0 {
                *self.pii.entry(kind.to_string()).or_default() += n as u64;
            }
        }
    }

    /// Records a document finally kept.
    pub fn keep(&mut self, source_file: &str, lang: &str, chars: usize) {
        self.kept += 1;
        bump(&mut self.sources, source_file).1 += 1;
        *bump(&mut self.langs, lang) += 1;
        *self.length_after.entry(length_bin(chars)).or_default() += 1;
    }
}

/// The length rule, tuned with `doc_quality` against DCLM's English human
/// labels: a document is kept when enough clean sentence text remains — the
/// characters of the lines C4's line rules would keep. Set per language by the
/// profiles (off for every shipped profile but English's), so a short, clean
/// paragraph is judged by the other rules only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DocLengthConfig {
    /// On or off; `None` takes the preset's choice (on for `web`).
    pub enabled: Option<bool>,
    /// Fewest characters in lines that pass C4's line rules (`None`: no
    /// minimum); a language's profile replaces it.
    pub min_clean_chars: Option<usize>,
}

impl Default for DocLengthConfig {
    fn default() -> Self {
        Self { enabled: None, min_clean_chars: Some(725) }
    }
}

impl DocLengthConfig {
    pub fn check(&self, text: &str) -> Result<(), crate::quality::Drop> {
        let Some(min) = self.min_clean_chars else { return Ok(()) };
        let clean = clean_sentence_chars(text);
        if clean < min {
            return Err(crate::quality::Drop { rule: "doc_length", detail: format!("{clean} characters of clean sentence lines < {min}") });
        }
        Ok(())
    }
}

/// A document-level verdict tuned against people: DCLM's human keep/drop
/// labels (`fixtures/dclm-quality-labels`, tuned on the documents outside
/// `agreement_data.jsonl` only). A document is kept when it is not shouting
/// (uppercase share of its letters); its length is [`DocLengthConfig`]'s rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DocQualityConfig {
    /// On or off; `None` takes the preset's choice (on for `web`).
    pub enabled: Option<bool>,
    /// Largest share of uppercase among letters.
    pub max_upper_frac: f64,
}

impl Default for DocQualityConfig {
    fn default() -> Self {
        Self { enabled: None, max_upper_frac: 0.09 }
    }
}

/// Uppercase share of a text's letters (0 without letters).
pub fn upper_frac(text: &str) -> f64 {
    let (upper, letters) =
        text.chars().filter(|c| c.is_alphabetic()).fold((0usize, 0usize), |(u, n), c| (u + usize::from(c.is_uppercase()), n + 1));
    if letters == 0 {
        0.0
    } else {
        upper as f64 / letters as f64
    }
}

impl DocQualityConfig {
    pub fn check(&self, text: &str) -> Result<(), crate::quality::Drop> {
        let (upper, letters) =
            text.chars().filter(|c| c.is_alphabetic()).fold((0usize, 0usize), |(u, n), c| (u + usize::from(c.is_uppercase()), n + 1));
        let frac = if letters == 0 { 0.0 } else { upper as f64 / letters as f64 };
        if frac > self.max_upper_frac {
            return Err(crate::quality::Drop {
                rule: "doc_quality_upper_frac",
                detail: format!("uppercase share of letters {frac:.3} > {}", self.max_upper_frac),
            });
        }
        Ok(())
    }
}

/// Characters of the lines C4's line rules keep (at least 3 words, none over
/// 1000 characters, terminal punctuation and no ellipsis, no `javascript` or
/// policy notice; citations removed) — C4's own line filter with its
/// document-level drops (too few sentences, lorem ipsum, curly braces) off.
pub fn clean_sentence_chars(text: &str) -> usize {
    static LINES_ONLY: std::sync::LazyLock<C4Config> = std::sync::LazyLock::new(|| C4Config {
        enabled: Some(true),
        min_num_sentences: None,
        filter_lorem_ipsum: false,
        filter_curly_bracket: false,
        ..C4Config::default()
    });
    match LINES_ONLY.apply(text, &mut LineEdits::default()) {
        Ok(kept) => kept.split('\n').map(|l| l.chars().count()).sum(),
        Err(_) => 0,
    }
}
