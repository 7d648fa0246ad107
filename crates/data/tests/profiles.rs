#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! Per-language profiles: the shipped ones are what `calibrate_quality` writes
//! from the bundled reference text (set FORJA_UPDATE_PROFILES=1 to rewrite
//! them), and the web preset keeps clean Spanish, French, German, Portuguese
//! and Italian prose and rejects it with planted faults, for the right reason.

use forja_data::calibrate::{calibrate, report_markdown, CalibrateConfig};
use forja_data::profile::{LangProfile, SHIPPED};
use forja_data::web::{process, Judged, Outcome, Preset, Rules};
use std::collections::HashSet;
use std::path::PathBuf;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(rel)
}

fn profiles_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("profiles")
}

/// The reference text of each calibrated language.
fn references(lang: &str) -> Vec<PathBuf> {
    match lang {
        "es" => vec![fixture("quijote/quijote.txt"), fixture("oscar-sample/data.jsonl")],
        "pt" | "it" => vec![fixture(&format!("handbook-pt-it/{lang}.txt"))],
        _ => vec![fixture("oscar-sample/data.jsonl")],
    }
}

fn config(lang: &str) -> CalibrateConfig {
    let mut cfg = CalibrateConfig { lang: lang.into(), ..Default::default() };
    cfg.read.text_field = "content".into();
    cfg
}

fn expected_profiles() -> Vec<(String, LangProfile, String)> {
    let mut out = Vec::new();
    for lang in ["es", "fr", "de", "pt", "it"] {
        let c = calibrate(&config(lang), &references(lang)).unwrap();
        let mut p = c.profile.clone();
        let files: Vec<String> = references(lang).iter().map(|f| f.strip_prefix(fixture("")).unwrap_or(f).display().to_string()).collect();
        p.source = format!("calibrate_quality on fixtures: {} (read.text_field = content)", files.join(", "));
        out.push((lang.to_string(), p, report_markdown(&c)));
    }
    out
}

#[test]
fn shipped_profiles_are_what_calibrate_quality_writes() {
    let update = std::env::var("FORJA_UPDATE_PROFILES").is_ok_and(|v| v == "1");
    for (lang, p, report) in expected_profiles() {
        eprintln!("{report}");
        let path = profiles_dir().join(format!("{lang}.json"));
        let json = serde_json::to_string_pretty(&p).unwrap() + "\n";
        if update {
            std::fs::write(&path, &json).unwrap();
        }
        let shipped = SHIPPED.iter().find(|(l, _)| *l == lang).unwrap().1;
        assert!(
            update || shipped == json,
            "{} is stale: run FORJA_UPDATE_PROFILES=1 cargo test --release -p forja-data --test profiles",
            path.display()
        );
    }
    // English is datatrove's constants; its calibration is shown for comparison.
    let en = calibrate(&config("en"), &references("en")).unwrap();
    eprintln!("{}", report_markdown(&en));
}

/// Paragraphs of prose (wrapped lines joined) with at least 60 words and 5
/// sentence ends, in `lang`.
fn prose(lang: &str, n: usize) -> Vec<String> {
    let id = forja_data::lang::LangConfig::default();
    let mut out = Vec::new();
    let paragraphs =
        |rel: &str| -> Vec<String> { std::fs::read_to_string(fixture(rel)).unwrap().split("\n\n").map(|p| p.replace('\n', " ")).collect() };
    let texts: Vec<String> = if lang == "es" {
        paragraphs("quijote/quijote.txt")
    } else if matches!(lang, "pt" | "it") {
        paragraphs(&format!("handbook-pt-it/{lang}.txt"))
    } else {
        std::fs::read_to_string(fixture("oscar-sample/data.jsonl"))
            .unwrap()
            .lines()
            .flat_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["content"].as_str().unwrap().lines().map(str::to_string).collect::<Vec<_>>()
            })
            .collect()
    };
    for t in texts {
        let t = strip_citations(t.trim());
        let words = t.split_whitespace().count();
        // Sentence ends: `.`, `!` or `?`, a space, then a capital or an opening mark.
        let chars: Vec<char> = t.chars().collect();
        let ends = chars
            .windows(3)
            .filter(|w| matches!(w[0], '.' | '!' | '?') && w[1] == ' ' && (w[2].is_uppercase() || "¿¡«—\"".contains(w[2])))
            .count();
        if (60..400).contains(&words) && ends >= 5 && t.ends_with('.') && id.identify(&t).0 == lang && !t.contains('[') {
            out.push(t);
            if out.len() == n {
                break;
            }
        }
    }
    assert_eq!(out.len(), n, "{lang}: not enough prose paragraphs");
    out
}

/// The text without Wikipedia citation marks (`[12]`).
fn strip_citations(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    while let Some(i) = rest.find('[') {
        out += &rest[..i];
        let after = &rest[i + 1..];
        match after.find(']') {
            Some(j) if after[..j].chars().all(|c| c.is_ascii_digit()) => rest = &after[j + 1..],
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out += rest;
    out.trim().to_string()
}

fn verdict(rules: &Rules, text: &str) -> (String, Judged) {
    let on = rules.enabled(Preset::Web);
    match process(text, 0, rules, &on, &HashSet::new()) {
        Outcome::Kept(k) => ("kept".into(), k.judged),
        Outcome::Dropped { rule, judged, .. } => (rule, judged),
    }
}

#[test]
fn the_web_preset_keeps_clean_prose_and_rejects_planted_faults_in_five_languages() {
    let rules = Rules::default();
    for lang in ["es", "fr", "de", "pt", "it"] {
        let paras = prose(lang, 12);
        let mut kept = 0;
        for p in &paras {
            let (v, judged) = verdict(&rules, p);
            assert_eq!(judged, Judged::Profile, "{lang}");
            if v == "kept" {
                kept += 1;
            } else {
                eprintln!("{lang} dropped by {v}: {}", p.chars().take(120).collect::<String>());
            }
        }
        eprintln!("{lang}: {kept} of {} prose paragraphs kept", paras.len());
        assert!(kept * 10 >= paras.len() * 9, "{lang}: only {kept} of {} clean paragraphs kept", paras.len());
        let p = paras.iter().find(|p| verdict(&rules, p).0 == "kept").unwrap();
        let tags: String = (0..40).map(|i| format!("#{}{i} ", ["oferta", "gratis", "ahora", "top"][i % 4])).collect();
        let spam = format!("{p}\n{tags}");
        assert_eq!(verdict(&rules, &spam).0, "gopher_too_many_hashes", "{lang}: symbol spam");
        let repeated = format!("{p}\n{}", "Haga clic aquí para ver más noticias y ofertas del día.\n".repeat(12));
        assert!(verdict(&rules, &repeated).0.starts_with("gopher_dup"), "{lang}: repeated lines: {}", verdict(&rules, &repeated).0);
        let menu = format!(
            "{}{p}\n",
            [
                "Inicio", "Noticias", "Deportes", "Cultura", "Contacto", "Tienda", "Blog", "Ayuda", "Cuenta", "Carrito", "Home", "News",
                "Sport", "Kultur", "Kontakt", "Shop", "Hilfe", "Konto", "Accueil", "Panier",
            ]
            .iter()
            .map(|m| format!("• {m}\n"))
            .collect::<String>()
        );
        assert_eq!(verdict(&rules, &menu).0, "gopher_too_many_bullets", "{lang}: boilerplate menu");
    }
}

#[test]
fn english_is_judged_as_configured_and_an_unprofiled_language_by_the_language_independent_rules() {
    let rules = Rules::default();
    let en = "The committee met on Tuesday to review the proposal. It was the first meeting of the year. ".repeat(8);
    assert_eq!(verdict(&rules, &en).1, Judged::AsConfigured);
    let ru = "Комиссия собралась во вторник, чтобы рассмотреть предложение о строительстве новой библиотеки в центре города. \
        Это было первое заседание в этом году, и все члены комиссии пришли вовремя. Председатель рассказал о планах на весну.";
    assert_eq!(forja_data::lang::LangConfig::default().identify(ru).0, "ru");
    assert_eq!(verdict(&rules, ru).1, Judged::Unprofiled);
}
