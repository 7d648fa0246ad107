//! Metrics as pure functions over predictions, checked against scikit-learn
//! through `fixtures/eval/golden.json` (written by `scripts/fixtures/eval-golden.py`).
//!
//! Classification follows scikit-learn's conventions: the classes averaged
//! over are the sorted union of the true and the predicted labels
//! (`labels=None`), and a ratio with a zero denominator counts as 0
//! (`zero_division=0`).

use serde::Serialize;

/// Scores of one class.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ClassScore {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Examples whose true label is the class.
    pub support: u64,
}

/// Precision, recall or F1 averaged three ways.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Averages {
    /// Unweighted mean over classes.
    pub macro_: f64,
    /// From the global counts of true positives, false positives and false negatives.
    pub micro: f64,
    /// Mean over classes weighted by support.
    pub weighted: f64,
}

/// Every classification metric of `(true, predicted)` pairs.
#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    pub n: usize,
    pub accuracy: f64,
    pub precision: Averages,
    pub recall: Averages,
    pub f1: Averages,
    /// The classes averaged over: the sorted union of true and predicted labels.
    pub labels: Vec<usize>,
    /// Scores of each class of `labels`, in that order.
    pub per_class: Vec<ClassScore>,
    /// `confusion[true][predicted]` over all `n_classes` classes.
    pub confusion: Vec<Vec<u64>>,
}

fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

fn f1_of(p: f64, r: f64) -> f64 {
    ratio(2.0 * p * r, p + r)
}

/// Classification metrics of `pairs` over classes `0..n_classes`.
///
/// Panics in debug builds only if a label is out of range; callers map labels
/// to indices first.
pub fn classification(pairs: &[(usize, usize)], n_classes: usize) -> Classification {
    let mut confusion = vec![vec![0u64; n_classes]; n_classes];
    for &(t, p) in pairs {
        confusion[t][p] += 1;
    }
    let support: Vec<u64> = confusion.iter().map(|row| row.iter().sum()).collect();
    let predicted: Vec<u64> = (0..n_classes).map(|c| confusion.iter().map(|row| row[c]).sum()).collect();
    let labels: Vec<usize> = (0..n_classes).filter(|&c| support[c] > 0 || predicted[c] > 0).collect();
    let per_class: Vec<ClassScore> = labels
        .iter()
        .map(|&c| {
            let tp = confusion[c][c] as f64;
            let precision = ratio(tp, predicted[c] as f64);
            let recall = ratio(tp, support[c] as f64);
            ClassScore { precision, recall, f1: f1_of(precision, recall), support: support[c] }
        })
        .collect();
    let n = pairs.len();
    let correct: u64 = (0..n_classes).map(|c| confusion[c][c]).sum();
    let total_support: f64 = per_class.iter().map(|c| c.support as f64).sum();
    let average = |f: fn(&ClassScore) -> f64| {
        let k = per_class.len().max(1) as f64;
        let macro_ = per_class.iter().map(f).sum::<f64>() / k;
        let weighted = ratio(per_class.iter().map(|c| f(c) * c.support as f64).sum::<f64>(), total_support);
        (macro_, weighted)
    };
    // Single-label: micro precision = micro recall = micro F1 = accuracy over the labels.
    let micro = ratio(correct as f64, n as f64);
    let avg = |f: fn(&ClassScore) -> f64| {
        let (macro_, weighted) = average(f);
        Averages { macro_, micro, weighted }
    };
    Classification {
        n,
        accuracy: micro,
        precision: avg(|c| c.precision),
        recall: avg(|c| c.recall),
        f1: avg(|c| c.f1),
        labels,
        per_class,
        confusion,
    }
}

/// Bins of [`expected_calibration_error`].
pub const ECE_BINS: usize = 15;

/// Expected calibration error of class probabilities `probs` (one row per
/// example) against `truth`: the confidence of a row is its largest
/// probability, the prediction its first argmax; rows go into [`ECE_BINS`]
/// equal-width bins, `(i/B, (i+1)/B]` to bin `i` (0 to bin 0), and the
/// error is Σ (n_bin / n) · |accuracy(bin) − mean confidence(bin)|.
pub fn expected_calibration_error(probs: &[Vec<f64>], truth: &[usize]) -> f64 {
    let mut count = [0usize; ECE_BINS];
    let mut conf_sum = [0f64; ECE_BINS];
    let mut correct = [0usize; ECE_BINS];
    for (row, &t) in probs.iter().zip(truth) {
        let (pred, conf) = argmax(row);
        let bin = ((conf * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
        count[bin] += 1;
        conf_sum[bin] += conf;
        correct[bin] += usize::from(pred == t);
    }
    let n = probs.len().max(1) as f64;
    (0..ECE_BINS)
        .filter(|&b| count[b] > 0)
        .map(|b| {
            let k = count[b] as f64;
            (k / n) * (correct[b] as f64 / k - conf_sum[b] / k).abs()
        })
        .sum()
}

/// Index and value of the first largest entry (0, −∞ for an empty row).
pub fn argmax(row: &[f64]) -> (usize, f64) {
    row.iter().enumerate().fold((0, f64::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best })
}

/// Mean negative log-likelihood of the true classes, probabilities clipped to
/// `[ε, 1 − ε]` (ε of f64), as scikit-learn's `log_loss`.
pub fn log_loss(probs: &[Vec<f64>], truth: &[usize]) -> f64 {
    let eps = f64::EPSILON;
    let total: f64 = probs.iter().zip(truth).map(|(row, &t)| -row[t].clamp(eps, 1.0 - eps).ln()).sum();
    total / probs.len().max(1) as f64
}

/// Regression metrics of a scalar head.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Regression {
    pub mse: f64,
    pub mae: f64,
    /// Coefficient of determination (1.0 when the targets are constant and
    /// predicted exactly, 0.0 when constant and missed, as scikit-learn).
    pub r2: f64,
}

/// MSE, MAE and R² of predictions against targets.
pub fn regression(truth: &[f64], pred: &[f64]) -> Regression {
    let n = truth.len().max(1) as f64;
    let mse = truth.iter().zip(pred).map(|(t, p)| (t - p).powi(2)).sum::<f64>() / n;
    let mae = truth.iter().zip(pred).map(|(t, p)| (t - p).abs()).sum::<f64>() / n;
    let mean = truth.iter().sum::<f64>() / n;
    let ss_tot: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    let ss_res = mse * n;
    let r2 = if ss_tot == 0.0 {
        if ss_res == 0.0 {
            1.0
        } else {
            0.0
        }
    } else {
        1.0 - ss_res / ss_tot
    };
    Regression { mse, mae, r2 }
}

/// The number an answer gives: the first number after GSM8K's `####` marker
/// when there is one, else the last number in the text; commas and a trailing
/// period dropped, `$` ignored. A `-` is a sign only at the start, after
/// whitespace, `=`, `(`, `$` or `:` (so `COVID-19` is 19). `None` when the text
/// holds no number.
pub fn final_number(text: &str) -> Option<String> {
    match text.rsplit_once("####") {
        Some((_, tail)) => numbers(tail).into_iter().next(),
        None => numbers(text).pop(),
    }
}

/// Every number of `text`, normalised, in order.
fn numbers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev = ' ';
    let flush = |cur: &mut String, out: &mut Vec<String>| {
        let t = cur.trim_end_matches(['.', ',']).to_string();
        if t.chars().any(|c| c.is_ascii_digit()) {
            out.push(normalise_number(&t));
        }
        cur.clear();
    };
    for c in text.chars() {
        let sign_ok = prev.is_whitespace() || "=($:".contains(prev);
        let continues = c.is_ascii_digit()
            || (c == '.' && !cur.is_empty())
            || (c == ',' && cur.chars().any(|d| d.is_ascii_digit()))
            || (c == '-' && cur.is_empty() && sign_ok);
        if continues {
            cur.push(c);
        } else if !(c == '$' && cur == "-") {
            flush(&mut cur, &mut out);
        }
        prev = c;
    }
    flush(&mut cur, &mut out);
    out
}

/// `1,200.50` → `1200.5`; `-0` → `0`; `007` → `7`.
fn normalise_number(s: &str) -> String {
    let s: String = s.chars().filter(|&c| c != ',').collect();
    match s.parse::<f64>() {
        Ok(v) if v == v.trunc() && v.abs() < 1e15 => format!("{}", v as i64),
        Ok(v) => format!("{v}"),
        Err(_) => s,
    }
}

/// Share of answers whose [`final_number`] equals the reference's.
pub fn exact_match(answers: &[String], references: &[String]) -> f64 {
    let hits =
        answers.iter().zip(references).filter(|(a, r)| matches!((final_number(a), final_number(r)), (Some(x), Some(y)) if x == y)).count();
    ratio(hits as f64, answers.len() as f64)
}

/// Wilson score interval of a proportion `k / n` at 95%.
pub fn wilson(k: f64, n: f64) -> (f64, f64) {
    if n == 0.0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let p = k / n;
    let den = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / den;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / den;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Newcombe's hybrid score interval (method 10, 1998) of the difference of
/// two proportions `k1/n1 − k2/n2`, at 95%.
pub fn difference_interval(k1: f64, n1: f64, k2: f64, n2: f64) -> (f64, f64) {
    let (p1, p2) = (ratio(k1, n1), ratio(k2, n2));
    let (l1, u1) = wilson(k1, n1);
    let (l2, u2) = wilson(k2, n2);
    let d = p1 - p2;
    let lo = d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt();
    let hi = d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt();
    (lo.max(-1.0), hi.min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_three_class_case() {
        // true 0 0 1 1 2 2, predicted 0 1 1 1 2 0.
        let pairs = [(0, 0), (0, 1), (1, 1), (1, 1), (2, 2), (2, 0)];
        let c = classification(&pairs, 3);
        assert!((c.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // class 0: tp 1, predicted 2, support 2 → p 0.5 r 0.5; class 1: tp 2, pred 3 → p 2/3 r 1;
        // class 2: tp 1, pred 1, support 2 → p 1 r 0.5.
        let p = [0.5, 2.0 / 3.0, 1.0];
        for (got, want) in c.per_class.iter().zip(p) {
            assert!((got.precision - want).abs() < 1e-12);
        }
        assert!((c.precision.macro_ - (0.5 + 2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        assert!((c.recall.macro_ - (0.5 + 1.0 + 0.5) / 3.0).abs() < 1e-12);
        assert_eq!(c.confusion, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]);
    }

    #[test]
    fn a_predicted_but_absent_class_counts_in_the_macro_average() {
        let c = classification(&[(0, 0), (0, 1)], 3);
        assert_eq!(c.labels, vec![0, 1]);
        assert!((c.precision.macro_ - 0.5).abs() < 1e-12, "class 1: precision 0; class 0: 1");
    }

    #[test]
    fn calibration_of_confident_right_and_wrong_answers() {
        // Two rows at confidence 0.9, one right one wrong: |0.5 − 0.9| = 0.4.
        let probs = vec![vec![0.9, 0.1], vec![0.1, 0.9]];
        assert!((expected_calibration_error(&probs, &[0, 0]) - 0.4).abs() < 1e-12);
        assert!(expected_calibration_error(&[vec![1.0, 0.0]], &[0]) < 1e-12);
    }

    #[test]
    fn final_numbers_of_answers() {
        assert_eq!(final_number("so 3 + 4 = 7\n#### 1,200").as_deref(), Some("1200"));
        assert_eq!(final_number("The answer is $18.").as_deref(), Some("18"));
        assert_eq!(final_number("it costs -3.50 dollars").as_deref(), Some("-3.5"));
        assert_eq!(final_number("no digits here"), None);
        assert_eq!(final_number("COVID-19 cases").as_deref(), Some("19"), "a hyphen after a letter is no sign");
        assert_eq!(final_number("#### 18\nNext, 7 apples").as_deref(), Some("18"), "the first number after ####");
        assert_eq!(final_number("she lost -$3").as_deref(), Some("-3"));
        assert_eq!(final_number("x = -4.").as_deref(), Some("-4"));
        assert!((exact_match(&["x = 5".into(), "7".into()], &["#### 5".into(), "#### 8".into()]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn intervals_contain_the_estimate() {
        let (lo, hi) = wilson(30.0, 100.0);
        assert!(lo < 0.3 && 0.3 < hi && (lo - 0.2189).abs() < 1e-3 && (hi - 0.3958).abs() < 1e-3);
        let (lo, hi) = difference_interval(60.0, 100.0, 40.0, 100.0);
        assert!(lo > 0.0 && lo < 0.2 && hi > 0.2 && hi < 0.4, "{lo} {hi}");
    }
}
