//! `calibrate_quality`: a language's profile from reference text (FineWeb-2's
//! way): each language-dependent statistic is measured on the reference units
//! (paragraphs) of the language, and the thresholds are set where together
//! they keep at least `keep_share` of them (each of the five bounds leaves out
//! at most a fifth of the rest).

use crate::lang::LangConfig;
use crate::profile::LangProfile;
use crate::quality::{GopherQualityConfig, WordSplit, GOPHER_STOP_WORDS};
use crate::read::{read_file, ReadConfig, ReadOutput};
use crate::web::{upper_frac, DocQualityConfig};
use forja_core::stage::{outputs, port, OutDir, OutputSpec, Stage, StageCtx};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

/// Thresholds a profile sets from the reference units: stop words, mean word
/// length (both ends), alphabetic words, uppercase share.
const BOUNDS: usize = 5;

/// Settings of `calibrate_quality`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalibrateConfig {
    /// Language of the reference text (ISO 639-1); units identified as another
    /// language are left out.
    pub lang: String,
    /// Share of the reference units the profile keeps: the share left out is
    /// split evenly among its five bounds (each leaves out at most a fifth).
    pub keep_share: f64,
    pub read: ReadConfig,
    /// Fewest words (Gopher's count) of a reference unit: shorter paragraphs
    /// (headings, menus, captions) are not reference prose.
    pub min_words: usize,
    /// Stop words of the profile: this many entries of the language's
    /// Stopwords ISO list, the most frequent in the reference text.
    pub stop_words: usize,
    /// Stop words to use instead of choosing them (empty: choose).
    pub stop_word_list: Vec<String>,
    pub words: WordSplit,
    /// The length rule written into the profile (`None`: off).
    pub min_clean_chars: Option<usize>,
    /// C4's fewest sentences written into the profile (`None`: off).
    pub min_num_sentences: Option<usize>,
}

impl Default for CalibrateConfig {
    fn default() -> Self {
        Self {
            lang: String::new(),
            keep_share: 0.95,
            read: ReadConfig::default(),
            min_words: 50,
            stop_words: GOPHER_STOP_WORDS.len(),
            stop_word_list: Vec::new(),
            words: WordSplit::Unicode,
            min_clean_chars: None,
            min_num_sentences: None,
        }
    }
}

/// A profile and what it was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub profile: LangProfile,
    /// Per statistic: (name, calibrated threshold, English constant, share of
    /// reference units the calibrated threshold keeps).
    pub thresholds: Vec<(String, f64, f64, f64)>,
    /// Share of reference units every calibrated threshold keeps together.
    pub kept_by_all: f64,
}

/// Reference units of a text: its blank-line paragraphs, each cut into lines
/// when its lines are long enough to stand alone (web pages: one paragraph a
/// line; wrapped prose: one paragraph a block).
fn units(text: &str, min_words: usize) -> Vec<&str> {
    let mut out = Vec::new();
    for block in text.split("\n\n").map(str::trim).filter(|b| !b.is_empty()) {
        let lines: Vec<&str> = block.lines().collect();
        if lines.len() > 1 && lines.iter().any(|l| l.split_whitespace().count() >= min_words) {
            out.extend(lines.into_iter().map(str::trim).filter(|l| !l.is_empty()));
        } else {
            out.push(block);
        }
    }
    out
}

/// The value at `share` of the sorted values (the lower one).
fn quantile(sorted: &[f64], share: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * share.clamp(0.0, 1.0)).floor() as usize;
    sorted[i]
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Measures `files` and writes the profile of `cfg.lang`.
pub fn calibrate(cfg: &CalibrateConfig, files: &[PathBuf]) -> anyhow::Result<Calibration> {
    anyhow::ensure!(!cfg.lang.is_empty(), "calibrate_quality: set `lang` (ISO 639-1 code of the reference text)");
    anyhow::ensure!(cfg.keep_share > 0.0 && cfg.keep_share <= 1.0, "calibrate_quality: keep_share must be in (0, 1]");
    let lang_id = LangConfig::default();
    let splitter = GopherQualityConfig { words: cfg.words, stop_words: Vec::new(), ..GopherQualityConfig::default() };
    let mut refs: Vec<String> = Vec::new();
    for f in files {
        let mut out = ReadOutput::default();
        read_file(f, &cfg.read, &mut out)?;
        for rec in out.records {
            let text = crate::clean::normalize(&rec.text);
            for u in units(&text, cfg.min_words) {
                if lang_id.identify(u).0 == cfg.lang && splitter.stats(u).non_symbol >= cfg.min_words {
                    refs.push(u.to_string());
                }
            }
        }
    }
    anyhow::ensure!(!refs.is_empty(), "calibrate_quality: no reference unit in language {} with {} words or more", cfg.lang, cfg.min_words);
    let stop_words = if cfg.stop_word_list.is_empty() { choose_stop_words(cfg, &refs)? } else { cfg.stop_word_list.clone() };
    let g = GopherQualityConfig { words: cfg.words, stop_words: stop_words.clone(), ..GopherQualityConfig::default() };
    let stats: Vec<_> = refs.iter().map(|u| (g.stats(u), upper_frac(u))).collect();
    let sorted = |f: &dyn Fn(&(crate::quality::QualityStats, f64)) -> f64| {
        let mut v: Vec<f64> = stats.iter().map(f).filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    // The share left out is split evenly among the five bounds, so the
    // profile as a whole keeps at least `keep_share` of the reference units.
    let tail = (1.0 - cfg.keep_share) / BOUNDS as f64;
    let (lo, hi) = (tail, 1.0 - tail);
    let avg = sorted(&|s| s.0.avg_word_length);
    let alpha = sorted(&|s| s.0.alpha_words_ratio);
    let stop = sorted(&|s| s.0.stop_words as f64);
    let upper = sorted(&|s| s.1);
    let profile = LangProfile {
        lang: cfg.lang.clone(),
        source: String::new(),
        keep_share: cfg.keep_share,
        units: refs.len(),
        words: cfg.words,
        stop_words,
        min_stop_words: (quantile(&stop, lo).floor() as usize).max(1),
        min_avg_word_length: round3(quantile(&avg, lo)),
        max_avg_word_length: round3(quantile(&avg, hi)),
        min_alpha_words_ratio: round3(quantile(&alpha, lo)),
        max_upper_frac: round3(quantile(&upper, hi)),
        min_clean_chars: cfg.min_clean_chars,
        min_num_sentences: cfg.min_num_sentences,
    };
    let en = LangProfile::english();
    let share =
        |keep: &dyn Fn(&(crate::quality::QualityStats, f64)) -> bool| stats.iter().filter(|s| keep(s)).count() as f64 / stats.len() as f64;
    let p = &profile;
    let thresholds = vec![
        ("min_stop_words".into(), p.min_stop_words as f64, en.min_stop_words as f64, share(&|s| s.0.stop_words >= p.min_stop_words)),
        (
            "min_avg_word_length".into(),
            p.min_avg_word_length,
            en.min_avg_word_length,
            share(&|s| s.0.avg_word_length >= p.min_avg_word_length),
        ),
        (
            "max_avg_word_length".into(),
            p.max_avg_word_length,
            en.max_avg_word_length,
            share(&|s| s.0.avg_word_length <= p.max_avg_word_length),
        ),
        (
            "min_alpha_words_ratio".into(),
            p.min_alpha_words_ratio,
            en.min_alpha_words_ratio,
            share(&|s| s.0.alpha_words_ratio >= p.min_alpha_words_ratio),
        ),
        ("max_upper_frac".into(), p.max_upper_frac, DocQualityConfig::default().max_upper_frac, share(&|s| s.1 <= p.max_upper_frac)),
    ];
    let kept_by_all = share(&|s| {
        s.0.stop_words >= p.min_stop_words
            && (p.min_avg_word_length..=p.max_avg_word_length).contains(&s.0.avg_word_length)
            && s.0.alpha_words_ratio >= p.min_alpha_words_ratio
            && s.1 <= p.max_upper_frac
    });
    Ok(Calibration { profile, thresholds, kept_by_all })
}

/// The `cfg.stop_words` entries of the language's Stopwords ISO list most
/// frequent (as words, case-sensitive) in the reference units.
fn choose_stop_words(cfg: &CalibrateConfig, refs: &[String]) -> anyhow::Result<Vec<String>> {
    let list = stop_words::lookup(&cfg.lang)
        .ok_or_else(|| anyhow::anyhow!("calibrate_quality: no Stopwords ISO list for {}; give stop_word_list", cfg.lang))?;
    let mut freq: HashMap<&str, u64> = list.iter().map(|w| (*w, 0)).collect();
    for u in refs {
        crate::quality::unicode_words(u, &mut |w| {
            if let Some(n) = freq.get_mut(w) {
                *n += 1;
            }
        });
    }
    let mut ranked: Vec<(&str, u64)> = freq.into_iter().filter(|(_, n)| *n > 0).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    Ok(ranked.into_iter().take(cfg.stop_words).map(|(w, _)| w.to_string()).collect())
}

/// The calibration report (markdown): each threshold beside the English
/// constant it replaces.
pub fn report_markdown(c: &Calibration) -> String {
    let p = &c.profile;
    let mut s = format!(
        "# Quality profile: {}\n\n{} reference units; target share kept {:.0}% (each of the five bounds leaves out at most a fifth of the rest); all together keep {:.1}%.\n\nStop words: {}\n\n| threshold | calibrated | English constant | reference kept |\n|---|---|---|---|\n",
        p.lang,
        p.units,
        p.keep_share * 100.0,
        c.kept_by_all * 100.0,
        p.stop_words.join(" ")
    );
    for (name, v, en, kept) in &c.thresholds {
        s += &format!("| {name} | {v} | {en} | {:.1}% |\n", kept * 100.0);
    }
    s += &format!("| min_clean_chars (doc_length) | {} | 725 | — |\n", p.min_clean_chars.map_or("off".to_string(), |n| n.to_string()));
    s += &format!("| min_num_sentences (c4) | {} | 5 | — |\n", p.min_num_sentences.map_or("off".to_string(), |n| n.to_string()));
    s
}

/// The profile output.
pub const PROFILE: OutputSpec = OutputSpec { name: "profile", path: "profile.json", kind: port::JSON };

/// The `calibrate_quality` stage.
pub struct CalibrateQuality;

impl Stage for CalibrateQuality {
    const KIND: &'static str = "calibrate_quality";
    const ABOUT: &'static str =
        "a language's quality profile from reference text: each language-dependent threshold set where it keeps keep_share of the text (use with clean's profiles.files)";
    const OUTPUTS: &'static [OutputSpec] = &[PROFILE, outputs::REPORT];
    const CODE_HASH: &'static str = env!("FORJA_CODE_HASH");
    type Params = CalibrateConfig;
    type Inputs = crate::stages::Files;

    fn run(&self, cfg: &CalibrateConfig, files: &crate::stages::Files, out: &OutDir, _ctx: &StageCtx) -> anyhow::Result<Vec<OutputSpec>> {
        let mut c = calibrate(cfg, &files.files)?;
        c.profile.source =
            format!("calibrate_quality on {}", files.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
        forja_core::fsutil::atomic_write(&out.path(&PROFILE), (serde_json::to_string_pretty(&c.profile)? + "\n").as_bytes())?;
        forja_core::fsutil::atomic_write(&out.path(&outputs::REPORT), report_markdown(&c).as_bytes())?;
        Ok(Self::OUTPUTS.to_vec())
    }
}
