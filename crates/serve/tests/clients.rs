#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! Real clients, unchanged, against the `forja-serve` binary: the `openai`
//! Python package, schemathesis over /openapi.json, and the chat page in
//! headless Chromium (Selenium with Debian's chromium-driver).

use forja_model::{save_model, Gpt, GptConfig};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use tch::{nn, Device};

const KEY: &str = "client-key-0001";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/setup --test", p.display());
    p
}

/// A random GPT over the printable ASCII characters, with a chat template.
fn model(dir: &Path) {
    let ascii: String = (32u8..127).map(char::from).chain(['\n']).collect();
    let specials = [forja_tokenizer::EOT.to_string(), "<|im_start|>".to_string(), "<|im_end|>".to_string()];
    let tok = forja_tokenizer::char_tokenizer(std::iter::once(ascii.as_str()), &specials).unwrap();
    let cfg = GptConfig {
        vocab_size: tok.vocab_size() as i64,
        block_size: 256,
        n_layer: 2,
        n_head: 2,
        n_embd: 64,
        dropout: 0.0,
        ..Default::default()
    };
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = Gpt::new(&vs.root(), &cfg).unwrap();
    save_model(dir, &vs, &cfg, &tok).unwrap();
    forja_model::chat::write_tokenizer_config(dir, &forja_model::chat::ChatTemplate::chatml(), cfg.block_size).unwrap();
}

/// The binary serving `model` on a free port; killed when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Served {
    fn start(model: &Path, feedback: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_forja-serve"))
            .arg(model)
            .args(["--port", "0", "--threads", "1", "--max-tokens", "128", "--requests-per-minute", "0", "--tokens-per-minute", "0"])
            .arg("--feedback-dir")
            .arg(feedback)
            .env("FORJA_API_KEYS", KEY)
            .env_remove("FORJA_ADMIN_KEY")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let line = lines.next().expect("forja-serve exited before listening").unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining the server's log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, url }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {what}: {e} (run scripts/setup --test)"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    stdout.to_string()
}

#[test]
fn the_openai_package_schemathesis_and_a_browser_all_work_against_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let gen_dir = dir.path().join("gpt");
    model(&gen_dir);
    let generator = Served::start(&gen_dir, &dir.path().join("fb-gpt"));
    let minilm = root().join("models/all-MiniLM-L6-v2");
    let encoder = Served::start(&minilm, &dir.path().join("fb-enc"));

    let out = run(
        Command::new(python()).arg(root().join("scripts/checks/openai-check.py")).args([
            "--base-url",
            &format!("{}/v1", generator.url),
            "--api-key",
            KEY,
            "--embeddings-base-url",
            &format!("{}/v1", encoder.url),
        ]),
        "scripts/checks/openai-check.py",
    );
    assert!(out.lines().last().unwrap().contains("\"ok\": true"), "{out}");
    assert!(out.contains("ok: embeddings"), "the embeddings checks ran: {out}");

    for (server, name) in [(&generator, "generator"), (&encoder, "encoder")] {
        run(
            Command::new(root().join("scripts/checks/schema-check")).args([
                "--url",
                &server.url,
                "--api-key",
                KEY,
                "--max-examples",
                "15",
                "--time-limit",
                "240",
            ]),
            &format!("scripts/checks/schema-check on the {name}"),
        );
    }

    // SIGHUP reloads the model folder in place.
    let status = Command::new("kill").args(["-HUP", &generator.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reloaded = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let text = rt.block_on(async { reqwest::get(format!("{}/metrics", generator.url)).await.unwrap().text().await.unwrap() });
        text.contains("forja_reloads_total{outcome=\"ok\"} 1")
    });
    assert!(reloaded, "SIGHUP reloaded the model");

    let out = run(
        Command::new(python()).arg(root().join("scripts/checks/serve-page-check.py")).args([
            "--url",
            &generator.url,
            "--api-key",
            KEY,
            "--message",
            "Hello there",
            "--timeout",
            "60",
        ]),
        "scripts/checks/serve-page-check.py",
    );
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["model_id"], "gpt");
    assert!(!last["reply"].as_str().unwrap().is_empty() && last["chunks_ok"] == true, "{out}");
}
