#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! forja's metrics against scikit-learn's on the same predictions
//! (`fixtures/eval/golden.json`, written by `scripts/fixtures/eval-golden.py`).

use forja_eval::metrics::{classification, expected_calibration_error, log_loss, regression};
use serde_json::Value;

fn golden() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/eval/golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn ints(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() < 1e-9, "{what}: forja {got}, scikit-learn {want}");
}

#[test]
fn classification_metrics_match_scikit_learn() {
    let g = golden();
    let cases = g["classification"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (t, p) = (ints(&case["y_true"]), ints(&case["y_pred"]));
        let k = case["n_classes"].as_u64().unwrap() as usize;
        let pairs: Vec<(usize, usize)> = t.iter().copied().zip(p.iter().copied()).collect();
        let c = classification(&pairs, k);
        close(c.accuracy, case["accuracy"].as_f64().unwrap(), &format!("{name} accuracy"));
        assert_eq!(c.labels, ints(&case["labels"]), "{name} labels");
        for (metric, avg) in [("precision", c.precision), ("recall", c.recall), ("f1", c.f1)] {
            close(avg.macro_, case[metric]["macro"].as_f64().unwrap(), &format!("{name} macro {metric}"));
            close(avg.micro, case[metric]["micro"].as_f64().unwrap(), &format!("{name} micro {metric}"));
            close(avg.weighted, case[metric]["weighted"].as_f64().unwrap(), &format!("{name} weighted {metric}"));
        }
        let per = &case["per_class"];
        for (i, s) in c.per_class.iter().enumerate() {
            close(s.precision, floats(&per["precision"])[i], &format!("{name} precision of class {i}"));
            close(s.recall, floats(&per["recall"])[i], &format!("{name} recall of class {i}"));
            close(s.f1, floats(&per["f1"])[i], &format!("{name} F1 of class {i}"));
            assert_eq!(s.support as usize, ints(&per["support"])[i], "{name} support of class {i}");
        }
        let confusion: Vec<Vec<u64>> =
            case["confusion"].as_array().unwrap().iter().map(|r| ints(r).into_iter().map(|v| v as u64).collect()).collect();
        assert_eq!(c.confusion, confusion, "{name} confusion");
        let probs: Vec<Vec<f64>> = case["probs"].as_array().unwrap().iter().map(floats).collect();
        close(expected_calibration_error(&probs, &t), case["ece"].as_f64().unwrap(), &format!("{name} ECE"));
        close(log_loss(&probs, &t), case["log_loss"].as_f64().unwrap(), &format!("{name} log loss"));
    }
}

#[test]
fn regression_metrics_match_scikit_learn() {
    let g = golden();
    for case in g["regression"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let r = regression(&floats(&case["y_true"]), &floats(&case["y_pred"]));
        close(r.mse, case["mse"].as_f64().unwrap(), &format!("{name} MSE"));
        close(r.mae, case["mae"].as_f64().unwrap(), &format!("{name} MAE"));
        close(r.r2, case["r2"].as_f64().unwrap(), &format!("{name} R²"));
    }
}
