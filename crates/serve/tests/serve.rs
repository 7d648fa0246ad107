#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! The server in-process on a loopback port, with tiny random GPT models:
//! auth, limits, validation, streaming, disconnects, hot reload, drift, feedback;
//! a tiny Llama (grouped-query attention) served as `forja_model::generate` decodes it.

use clap::Parser;
use forja_core::token_counts::TokenCounts;
use forja_core::{Artifact, Preference, Rating};
use forja_model::{save_model, Arch, Gpt, GptConfig};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tch::{nn, Device};

const KEY: &str = "test-key-0001";
const OTHER_KEY: &str = "test-key-0002";
const ADMIN: &str = "admin-key-0001";
const TRAINING: &str = "the quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun and the birds sing ";
const RARE: &str = "0123456789#$%&*+=<>@[]^_{}|~";

/// A random 2-layer GPT over characters, with the training text's token counts.
fn tiny_model(dir: &Path, seed: i64) {
    model_of_width(dir, seed, 32);
}

fn model_of_width(dir: &Path, seed: i64, n_embd: i64) {
    model_of(dir, seed, &GptConfig { block_size: 256, n_layer: 2, n_head: 2, n_embd, dropout: 0.0, ..Default::default() });
}

/// A random 2-layer Llama over characters: grouped-query attention (4 query
/// heads over 2 key/value heads), SwiGLU, an untied head, rotary base 50 000.
fn tiny_llama(dir: &Path, seed: i64) {
    let cfg = GptConfig {
        arch: Arch::Llama,
        block_size: 256,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        n_embd: 32,
        tie_word_embeddings: false,
        rope_theta: 50_000.0,
        ..Default::default()
    };
    model_of(dir, seed, &cfg);
}

/// A random model of `base` over characters (its vocabulary the tokenizer's),
/// with the training text's token counts.
fn model_of(dir: &Path, seed: i64, base: &GptConfig) {
    let tok = forja_tokenizer::char_tokenizer(
        [TRAINING, RARE, "ABCDEFGHIJKLMNOPQRSTUVWXYZ.,?!:\n"].into_iter(),
        &[forja_tokenizer::EOT.to_string()],
    )
    .unwrap();
    let cfg = GptConfig { vocab_size: tok.vocab_size() as i64, ..base.clone() };
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Gpt::new(&vs.root(), &cfg).unwrap();
    save_model(dir, &vs, &cfg, &tok).unwrap();
    let ids = tok.encode(&TRAINING.repeat(20)).unwrap();
    TokenCounts::of([ids.as_slice()], tok.vocab_size(), "test").write(dir).unwrap();
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: forja_serve::ServeArgs,
}

struct Server {
    base: String,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Server {
    /// Serves a fresh tiny model (or `model`) with `extra` options.
    async fn start(model: Option<&Path>, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model_dir = match model {
            Some(m) => m.to_path_buf(),
            None => {
                let m = dir.path().join("model");
                tiny_model(&m, 1);
                m
            }
        };
        std::fs::write(dir.path().join("keys"), format!("# test keys\n{KEY}\n{OTHER_KEY}\n")).unwrap();
        std::fs::write(dir.path().join("admin"), format!("{ADMIN}\n")).unwrap();
        let p = |name: &str| dir.path().join(name).display().to_string();
        let mut argv: Vec<String> =
            ["forja-serve", &model_dir.display().to_string(), "--api-keys", &p("keys"), "--admin-keys", &p("admin")]
                .iter()
                .map(|s| s.to_string())
                .collect();
        argv.extend(["--feedback-dir".to_string(), p("feedback"), "--threads".to_string(), "1".to_string()]);
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = Cli::parse_from(argv).args;
        let state = forja_serve::build(&args).unwrap();
        let app = forja_serve::http::router(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, dir, client: reqwest::Client::new() }
    }

    async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self.client.post(format!("{}{path}", self.base)).json(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, resp.json().await.unwrap_or(Value::Null), headers)
    }

    async fn get(&self, path: &str, key: Option<&str>) -> (u16, String) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// A metric's value from /metrics (the first sample whose line starts with `name`).
    async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics", None).await;
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    }
}

/// A greedy completion request for a prompt (a text, or several in a list).
fn completion(prompt: impl serde::Serialize, max_tokens: usize) -> Value {
    json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_and_checked() {
    let s = Server::start(None, &[]).await;
    let body = completion("the fox", 4);
    let (status, err, _) = s.post("/v1/completions", None, &body).await;
    assert_eq!(status, 401);
    assert_eq!(err["error"]["type"], "authentication_error");
    assert!(err["error"]["message"].as_str().unwrap().contains("missing API key"));
    let (status, err, _) = s.post("/v1/completions", Some("wrong-key-123"), &body).await;
    assert_eq!((status, err["error"]["message"].as_str().unwrap()), (401, "invalid API key"));
    let (status, ok, headers) = s.post("/v1/completions", Some(KEY), &body).await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["usage"]["completion_tokens"], 4);
    assert!(headers["x-forja-model"].to_str().unwrap().contains("@blake3:"));
    // Admin routes need an admin key; health, readiness and metrics need none.
    let (status, _, _) = s.post("/admin/reload", Some(KEY), &json!({})).await;
    assert_eq!(status, 403);
    for path in ["/health", "/ready", "/metrics", "/openapi.json", "/"] {
        assert_eq!(s.get(path, None).await.0, 200, "{path}");
    }
    assert_eq!(s.get("/v1/models", None).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_per_key_and_say_when_to_retry() {
    let s = Server::start(None, &["--requests-per-minute", "3", "--tokens-per-minute", "100000"]).await;
    for _ in 0..3 {
        assert_eq!(s.get("/v1/models", Some(KEY)).await.0, 200);
    }
    let (status, err, headers) = s.post("/v1/completions", Some(KEY), &completion("the", 2)).await;
    assert_eq!(status, 429);
    assert_eq!(err["error"]["type"], "rate_limit_error");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(s.get("/v1/models", Some(OTHER_KEY)).await.0, 200, "another key has its own budget");
    // A token budget: a request bigger than the whole minute's budget is a 400, a
    // request over what is left a 429.
    let t = Server::start(None, &["--tokens-per-minute", "60"]).await;
    let (status, err, _) = t.post("/v1/completions", Some(KEY), &completion("the", 100)).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("60 tokens per minute"));
    assert_eq!(t.post("/v1/completions", Some(KEY), &completion("the", 40)).await.0, 200);
    assert_eq!(t.post("/v1/completions", Some(KEY), &completion("the", 40)).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_field_is_a_4xx_naming_the_field_and_the_limit() {
    let s = Server::start(None, &["--max-tokens", "64", "--max-body-bytes", "4096"]).await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"prompt": "a", "top_p": 1.5}), "top_p", "top_p must be in (0, 1]"),
        (json!({"prompt": "a", "top_p": 0}), "top_p", "top_p must be in (0, 1]"),
        (json!({"prompt": "a", "temperature": 3}), "temperature", "temperature must be in [0, 2]"),
        (json!({"prompt": "a", "n": 0}), "n", "n must be in [1, 8]"),
        (json!({"prompt": "a", "n": 99}), "n", "n must be in [1, 8]"),
        (json!({"prompt": "a", "max_tokens": 0}), "max_tokens", "max_tokens must be in [1, 64]"),
        (json!({"prompt": "a", "max_tokens": 65}), "max_tokens", "max_tokens must be in [1, 64]"),
        (json!({"prompt": "a", "logprobs": 6}), "logprobs", "logprobs must be in [0, 5]"),
        (json!({"prompt": "a", "stop": vec!["x"; 17]}), "stop", "at most 16 strings"),
        (json!({"prompt": "a", "stop": ["x".repeat(65)]}), "stop", "longer than 64 characters"),
        (json!({"prompt": "a", "stop": [""]}), "stop", "stop[0] is empty"),
        (json!({"prompt": "a", "echo": true, "stream": true}), "echo", "not with stream"),
        (json!({"prompt": "a", "max_tokens": 0}), "max_tokens", "max_tokens must be in [1, 64]"),
        (json!({"prompt": "a", "max_tokens": "many"}), "max_tokens", "invalid type"),
        (json!({"prompt": {"a": 1}}), "prompt", "must be a string, a list of strings"),
        (json!({"prompt": "a", "stop": 3}), "stop", "must be a string or a list of strings"),
        (json!({"prompt": "a", "temperature": "hot"}), "temperature", "invalid type"),
        (json!({"max_tokens": 3}), "prompt", "`prompt` is required"),
        (json!({"prompt": "a".repeat(300)}), "prompt", "the model's context is 256 tokens"),
        (json!({"prompt": "a".repeat(200), "max_tokens": 64}), "max_tokens", "maximum context length is 256"),
        (json!({"prompt": [999999]}), "prompt", "outside the vocabulary"),
        (json!({"prompt": "a", "model": "gpt-9"}), "model", "does not exist"),
    ];
    for (body, param, text) in cases {
        let (status, err, _) = s.post("/v1/completions", Some(KEY), &body).await;
        assert!((400..500).contains(&status), "{body}: {status}");
        let e = &err["error"];
        assert_eq!(e["param"], param, "{body}: {err}");
        assert!(e["message"].as_str().unwrap().contains(text), "{body}: {err}");
    }
    let chat_cases: Vec<(Value, &str, &str)> = vec![
        (json!({"messages": []}), "messages", "at least one message"),
        (json!({"messages": [{"role": "robot", "content": "hi"}]}), "messages[0].role", "must be system, developer, user or assistant"),
        (json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), "messages[0].content[0]", "only text parts"),
        (json!({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}), "top_logprobs", "needs logprobs: true"),
        (json!({"messages": [{"role": "user"}], "max_completion_tokens": 0}), "max_completion_tokens", "must be in [1, 64]"),
        (json!({"messages": "hi"}), "messages", "invalid type"),
        (json!({"max_tokens": 3}), "messages", "`messages` is required"),
    ];
    for (body, param, text) in chat_cases {
        let (status, err, _) = s.post("/v1/chat/completions", Some(KEY), &body).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"]["param"], param, "{body}: {err}");
        assert!(err["error"]["message"].as_str().unwrap().contains(text), "{body}: {err}");
    }
    // Not JSON, too big, the wrong route: still OpenAI-shaped 4xx.
    let resp = s.client.post(format!("{}/v1/completions", s.base)).bearer_auth(KEY).body("{oops").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().contains("not valid JSON"));
    let (status, err, _) = s.post("/v1/completions", Some(KEY), &json!({"prompt": "x".repeat(5000)})).await;
    assert_eq!(status, 413, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("4096 bytes"));
    let (status, err, _) = s.post("/v1/nothing", Some(KEY), &json!({})).await;
    assert_eq!((status, err["error"]["type"].as_str().unwrap()), (404, "not_found_error"));
    let (status, err, _) = s.post("/v1/embeddings", Some(KEY), &json!({"input": "hi"})).await;
    assert_eq!(status, 400, "a generator serves no embeddings: {err}");
}

/// Server-sent events of a response: the JSON payloads, and whether `[DONE]` ended them.
async fn read_events(resp: reqwest::Response) -> (Vec<Value>, bool) {
    let text = resp.text().await.unwrap();
    let mut events = Vec::new();
    let mut done = false;
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let data = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect::<Vec<_>>().join("\n");
        if data == "[DONE]" {
            done = true;
        } else if !data.is_empty() {
            assert!(!done, "an event after [DONE]");
            events.push(serde_json::from_str(&data).unwrap());
        }
    }
    (events, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_chunks_are_openai_chunks_and_add_up_to_the_plain_answer() {
    let s = Server::start(None, &[]).await;
    let body = json!({"prompt": "the lazy", "max_tokens": 12, "temperature": 0, "ignore_eos": true, "n": 2});
    let (_, plain, _) = s.post("/v1/completions", Some(KEY), &body).await;
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let resp = s.client.post(format!("{}/v1/completions", s.base)).bearer_auth(KEY).json(&sbody).send().await.unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let (events, done) = read_events(resp).await;
    assert!(done, "the stream ends with [DONE]");
    let id = events[0]["id"].as_str().unwrap().to_string();
    let mut texts = [String::new(), String::new()];
    let mut finished = 0;
    for e in &events {
        assert_eq!(e["object"], "text_completion");
        assert_eq!(e["id"], id.as_str());
        assert!(e["system_fingerprint"].as_str().unwrap().starts_with("forja-"));
        for c in e["choices"].as_array().unwrap() {
            texts[c["index"].as_u64().unwrap() as usize].push_str(c["text"].as_str().unwrap());
            if c["finish_reason"] == "length" {
                finished += 1;
            }
        }
    }
    assert_eq!(finished, 2);
    let usage = &events.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 24);
    assert!(events.last().unwrap()["choices"].as_array().unwrap().is_empty());
    for i in 0..2 {
        assert_eq!(texts[i], plain["choices"][i]["text"].as_str().unwrap(), "choice {i}");
    }
    // Chat: a role delta first, content deltas, a finish reason, then [DONE].
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": true, "ignore_eos": true, "seed": 3});
    let resp = s.client.post(format!("{}/v1/chat/completions", s.base)).bearer_auth(KEY).json(&chat).send().await.unwrap();
    let (events, done) = read_events(resp).await;
    assert!(done);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(events.iter().all(|e| e["object"] == "chat.completion.chunk"));
    assert_eq!(events.last().unwrap()["choices"][0]["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_cut_the_text_and_seeds_repeat() {
    let s = Server::start(None, &[]).await;
    let body = json!({"prompt": "the cat", "max_tokens": 40, "temperature": 0.9, "seed": 7, "ignore_eos": true});
    let (_, a, _) = s.post("/v1/completions", Some(KEY), &body).await;
    let (_, b, _) = s.post("/v1/completions", Some(KEY), &body).await;
    let text = a["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(text, b["choices"][0]["text"].as_str().unwrap(), "same seed, same text");
    // Stop at a piece of that text, early or late in it: the answer ends right
    // before its first occurrence, sent whole or streamed.
    let chars: Vec<char> = text.chars().collect();
    for at in [10, chars.len() - 4] {
        let stop: String = chars[at..at + 2].iter().collect();
        let cut = text.find(&stop).unwrap();
        let mut with_stop = body.clone();
        with_stop["stop"] = json!([stop]);
        let (_, c, _) = s.post("/v1/completions", Some(KEY), &with_stop).await;
        assert_eq!(c["choices"][0]["text"].as_str().unwrap(), &text[..cut], "stop {stop:?}");
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        with_stop["stream"] = json!(true);
        let resp = s.client.post(format!("{}/v1/completions", s.base)).bearer_auth(KEY).json(&with_stop).send().await.unwrap();
        let (events, done) = read_events(resp).await;
        assert!(done);
        let streamed: String = events.iter().flat_map(|e| e["choices"].as_array().unwrap()).map(|c| c["text"].as_str().unwrap()).collect();
        assert_eq!(streamed, &text[..cut], "streamed, stop {stop:?}");
    }
}

fn text_of(r: &Value) -> String {
    r["choices"][0]["text"].as_str().unwrap().to_string()
}

/// A three-turn chat as completions after a system prompt: each turn's prompt
/// is the previous prompt, its answer and a new question. Greedy, or sampled
/// with `seed`. The answers, and each turn's prompt tokens read from the cache.
async fn conversation(s: &Server, seed: Option<u64>) -> (Vec<String>, Vec<u64>) {
    let mut prompt = TRAINING.to_string();
    let (mut answers, mut cached) = (Vec::new(), Vec::new());
    for q in ["THE QUICK FOX? ", "THE LAZY DOG? ", "THE WARM SUN? "] {
        prompt.push_str(q);
        let mut body = completion(&prompt, 24);
        if let Some(seed) = seed {
            body["temperature"] = json!(0.9);
            body["seed"] = json!(seed);
        }
        let (status, r, _) = s.post("/v1/completions", Some(KEY), &body).await;
        assert_eq!(status, 200, "{r}");
        let answer = text_of(&r);
        prompt.push_str(&answer);
        prompt.push('\n');
        answers.push(answer);
        cached.push(r["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap());
    }
    (answers, cached)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_caching_reuses_earlier_turns_and_changes_no_token() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path(), 7);
    let cached = Server::start(Some(dir.path()), &[]).await;
    let plain = Server::start(Some(dir.path()), &["--no-prefix-cache"]).await;
    for seed in [None, Some(11)] {
        let ((a, hits), (b, none)) = (conversation(&cached, seed).await, conversation(&plain, seed).await);
        assert_eq!(a, b, "seed {seed:?}: the same answers with and without the prefix cache");
        // Each later turn found at least the previous turn's whole blocks.
        assert!(hits[1] >= 96 && hits[2] > hits[1], "cached prompt tokens per turn: {hits:?}");
        assert_eq!(none, vec![0, 0, 0]);
        if seed.is_some() {
            let chars: std::collections::HashSet<char> = a.concat().chars().collect();
            assert!(chars.len() > 3, "sampled answers vary: {a:?}");
        }
    }
    // Requests sharing the system prompt, at once.
    let bodies: Vec<Value> =
        ["A", "BIRDS SING? ", "CAT", "THE DOG SLEEPS? "].iter().map(|q| completion(format!("{TRAINING}{q}"), 30)).collect();
    let (a, b) = futures_util::future::join(
        futures_util::future::join_all(bodies.iter().map(|b| cached.post("/v1/completions", Some(KEY), b))),
        futures_util::future::join_all(bodies.iter().map(|b| plain.post("/v1/completions", Some(KEY), b))),
    )
    .await;
    let texts = |rs: &[(u16, Value, reqwest::header::HeaderMap)]| rs.iter().map(|r| text_of(&r.1)).collect::<Vec<_>>();
    assert_eq!(texts(&a), texts(&b));
    // Turns two and three reused at least the system prompt's whole blocks
    // (six of 16 tokens); without the cache nothing was reused.
    let reused = cached.metric("forja_prompt_cached_tokens_total").await;
    assert!(reused >= 2.0 * 2.0 * 96.0, "{reused} prompt tokens from the cache");
    assert_eq!(plain.metric("forja_prompt_cached_tokens_total").await, 0.0);
    assert!(cached.metric("forja_kv_blocks_cached").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_paged_cache_preempts_and_recomputes_and_changes_no_token() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path(), 6);
    // 2 layers x 2 x 32 floats: 512 bytes a token, so 0.25 MiB holds 512
    // tokens: 32 blocks of 16, two full contexts.
    let small = Server::start(Some(dir.path()), &["--kv-cache-mb", "0.25", "--max-batch", "8"]).await;
    let slots = Server::start(Some(dir.path()), &["--kv-layout", "slots"]).await;
    assert_eq!((small.metric("forja_kv_blocks_free").await, small.metric("forja_kv_blocks_used").await), (32.0, 0.0));
    // Sampled, so every token (and the sampler's state across a preemption)
    // counts. The six prompts go in one request, so they are admitted together
    // and run at once however fast the engine decodes.
    let prompts = ["the", "a cat", "birds sing in the warm", "x", "the lazy dog while", "sun"];
    let body = json!({"prompt": prompts, "max_tokens": 150, "temperature": 0.9, "seed": 5, "ignore_eos": true});
    let ((sa, ra, _), (sb, rb, _)) =
        futures_util::future::join(small.post("/v1/completions", Some(KEY), &body), slots.post("/v1/completions", Some(KEY), &body)).await;
    assert_eq!((sa, sb), (200, 200), "{ra} {rb}");
    assert_eq!(ra["usage"]["completion_tokens"], 6 * 150);
    let texts = |r: &Value| -> Vec<String> {
        let mut c: Vec<(i64, String)> = r["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["index"].as_i64().unwrap(), c["text"].as_str().unwrap().to_string()))
            .collect();
        c.sort();
        c.into_iter().map(|(_, t)| t).collect()
    };
    let (ta, tb) = (texts(&ra), texts(&rb));
    assert_eq!(ta.len(), 6);
    assert_eq!(ta, tb, "the same tokens with preemption as without");
    assert!(ta.iter().collect::<std::collections::HashSet<_>>().len() == 6, "different prompts, different texts");
    // Six sequences of up to 11 blocks each did not fit in 32 at once.
    assert!(small.metric("forja_preemptions_total").await >= 1.0);
    assert_eq!(slots.metric("forja_preemptions_total").await, 0.0);
    // Every block is free again (the full ones keep their prefixes, idle),
    // once the engine has finished the step that answered the last request.
    let mut blocks = (f64::NAN, f64::NAN);
    for _ in 0..50 {
        blocks = (small.metric("forja_kv_blocks_used").await, small.metric("forja_kv_blocks_free").await);
        if blocks == (0.0, 32.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(blocks, (0.0, 32.0));
    // A cache smaller than one context is refused at start, saying what it needs.
    let argv = ["forja-serve", &dir.path().display().to_string(), "--no-auth", "--kv-cache-mb", "0.1"];
    let err = forja_serve::build(&Cli::parse_from(argv).args).err().unwrap().to_string();
    assert!(err.contains("less than its context of 256 tokens: give it at least 0.1 MiB"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_frees_its_slot() {
    // Wide enough that 250 tokens take a while, so the disconnect comes first.
    let dir = tempfile::tempdir().unwrap();
    model_of_width(dir.path(), 1, 512);
    let s = Server::start(Some(dir.path()), &["--max-batch", "1"]).await;
    let long = json!({"prompt": "the", "max_tokens": 250, "temperature": 1.0, "ignore_eos": true, "stream": true});
    let resp = s.client.post(format!("{}/v1/completions", s.base)).bearer_auth(KEY).json(&long).send().await.unwrap();
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(body); // the client goes away mid-stream
                // The only slot is free again: a new request is served at once.
    let (status, ok, _) =
        tokio::time::timeout(Duration::from_secs(60), s.post("/v1/completions", Some(KEY), &completion("the", 3))).await.unwrap();
    assert_eq!(status, 200, "{ok}");
    let mut cancelled = 0.0;
    for _ in 0..50 {
        cancelled = s.metric("forja_cancelled_total").await;
        if cancelled >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let generated = s.metric("forja_generated_tokens_total").await;
    assert_eq!(cancelled, 1.0, "generated {generated}");
    let generated = s.metric("forja_generated_tokens_total").await;
    assert!(generated < 200.0, "the abandoned sequence stopped early: {generated} tokens in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let s = Server::start(None, &["--max-batch", "1", "--queue", "1"]).await;
    let body = json!({"prompt": "the", "max_tokens": 200, "ignore_eos": true});
    let reqs: Vec<_> = (0..4).map(|_| s.post("/v1/completions", Some(KEY), &body)).collect();
    let results = futures_util::future::join_all(reqs).await;
    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert!(statuses.contains(&200) && statuses.contains(&429), "{statuses:?}");
    let busy = results.iter().find(|r| r.0 == 429).unwrap();
    assert!(busy.1["error"]["message"].as_str().unwrap().contains("queue is full"));
    assert_eq!(busy.2["retry-after"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_loses_no_request() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    tiny_model(&a, 1);
    tiny_model(&b, 2);
    let s = Server::start(Some(&a), &["--max-batch", "3", "--model-id", "tiny"]).await;
    let (_, models, _) = s.post("/v1/completions", Some(KEY), &completion("the", 1)).await;
    let old = models["system_fingerprint"].as_str().unwrap().to_string();
    let body = completion("the sun", 60);
    let load: Vec<_> = (0..6).map(|_| s.post("/v1/completions", Some(KEY), &body)).collect();
    let reload = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.post("/admin/reload", Some(ADMIN), &json!({"model_dir": b})).await
    };
    let (results, (status, reloaded, _)) = tokio::join!(futures_util::future::join_all(load), reload);
    assert_eq!(status, 200, "{reloaded}");
    for (st, r, _) in &results {
        assert_eq!(*st, 200, "{r}");
        assert_eq!(r["usage"]["completion_tokens"], 60, "every request finished in full");
    }
    let (_, after, _) = s.post("/v1/completions", Some(KEY), &completion("the", 1)).await;
    let new = after["system_fingerprint"].as_str().unwrap().to_string();
    assert_ne!(new, old, "new requests go to the new weights");
    let (_, models) = s.get("/v1/models", Some(KEY)).await;
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["hash"], reloaded["model"]["hash"]);
    assert_eq!(models["data"][0]["id"], "tiny");
    // A folder that is no model leaves the old one serving.
    let (status, err, _) = s.post("/admin/reload", Some(ADMIN), &json!({"model_dir": root.path()})).await;
    assert_eq!(status, 400);
    assert!(err["error"]["message"].as_str().unwrap().contains("still serving tiny"), "{err}");
    assert_eq!(s.post("/v1/completions", Some(KEY), &completion("the", 2)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drift_gauge_rises_when_prompts_shift() {
    let s = Server::start(None, &["--drift-window", "400"]).await;
    let like_training = TRAINING.repeat(2);
    for _ in 0..3 {
        assert_eq!(s.post("/v1/completions", Some(KEY), &completion(&like_training, 1)).await.0, 200);
    }
    let calm = s.metric("forja_drift_psi").await;
    assert!(calm < 0.1, "prompts like the training text: PSI {calm}");
    let shifted = RARE.repeat(8);
    for _ in 0..3 {
        assert_eq!(s.post("/v1/completions", Some(KEY), &completion(&shifted, 1)).await.0, 200);
    }
    let hot = s.metric("forja_drift_psi").await;
    let js = s.metric("forja_drift_js_divergence").await;
    assert!(hot > 1.0 && hot > 10.0 * calm.max(0.01), "shifted prompts: PSI {calm} -> {hot}");
    assert!(js > 0.5, "JS {js}");
    assert_eq!(s.metric("forja_drift_window_tokens").await, 400.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_lands_in_the_ratings_and_preferences_artifacts() {
    let s = Server::start(None, &[]).await;
    let (_, c, _) = s
        .post(
            "/v1/chat/completions",
            Some(KEY),
            &json!({"messages": [{"role": "user", "content": "the fox?"}], "max_tokens": 5, "ignore_eos": true, "n": 2}),
        )
        .await;
    let id = c["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    let (status, r, _) = s.post("/v1/feedback", Some(KEY), &json!({"id": id, "rating": "up"})).await;
    assert_eq!((status, r["recorded"].as_str().unwrap()), (200, "rating"));
    let (status, _, _) = s.post("/v1/feedback", Some(OTHER_KEY), &json!({"id": id, "index": 1, "rating": -1, "annotator": "ana"})).await;
    assert_eq!(status, 200);
    let (status, r, _) = s.post("/v1/feedback", Some(KEY), &json!({"id": id, "preferred": "A quick brown fox."})).await;
    assert_eq!((status, r["recorded"].as_str().unwrap()), (200, "preference"));
    // Unknown ids, bad ratings and both kinds at once are 4xx.
    assert_eq!(s.post("/v1/feedback", Some(KEY), &json!({"id": "cmpl-nope", "rating": "up"})).await.0, 404);
    assert_eq!(s.post("/v1/feedback", Some(KEY), &json!({"id": id, "rating": "meh"})).await.0, 400);
    assert_eq!(s.post("/v1/feedback", Some(KEY), &json!({"id": id, "rating": "up", "preferred": "x"})).await.0, 400);
    assert_eq!(s.post("/v1/feedback", Some(KEY), &json!({"id": id, "index": 5, "rating": "up"})).await.0, 400);

    let fb = s.dir.path().join("feedback");
    let ratings = Rating::read(&fb.join("ratings.arrow")).unwrap();
    assert_eq!(ratings.len(), 2);
    assert_eq!((ratings[0].rating, ratings[1].rating), (1, -1));
    assert_eq!(ratings[0].completion, c["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(ratings[1].completion, c["choices"][1]["message"]["content"].as_str().unwrap());
    assert!(ratings[0].prompt.contains("the fox?") && ratings[0].model.contains("@blake3:"));
    assert!(ratings[0].annotator.starts_with("key-") && ratings[1].annotator == "ana");
    let prefs = Preference::read(&fb.join("preferences.arrow")).unwrap();
    assert_eq!(prefs.len(), 1);
    assert_eq!(prefs[0].chosen, "A quick brown fox.");
    assert_eq!(prefs[0].rejected, c["choices"][0]["message"]["content"].as_str().unwrap());
    assert!(prefs[0].source.contains(id));
}

fn minilm() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").exists(), "{} is missing: run scripts/setup --test", dir.display());
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoder_serves_unit_embeddings_that_rank_meaning() {
    let s = Server::start(Some(&minilm()), &[]).await;
    let input = ["How do I reset my card PIN?", "I forgot the PIN of my card", "The weather is lovely today"];
    let (status, r, _) = s.post("/v1/embeddings", Some(KEY), &json!({"input": input})).await;
    assert_eq!(status, 200, "{r}");
    let vecs: Vec<Vec<f64>> =
        r["data"].as_array().unwrap().iter().map(|d| serde_json::from_value(d["embedding"].clone()).unwrap()).collect();
    assert_eq!(vecs.len(), 3);
    assert!(vecs.iter().all(|v| v.len() == 384 && (v.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() < 1e-4));
    let cos = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert!(cos(&vecs[0], &vecs[1]) > cos(&vecs[0], &vecs[2]) + 0.3);
    assert!(r["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    let (status, err, _) = s.post("/v1/completions", Some(KEY), &completion("hi", 2)).await;
    assert_eq!(status, 400, "an encoder does not generate: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_is_cut_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    model_of_width(dir.path(), 1, 512);
    let s = Server::start(Some(dir.path()), &["--max-batch", "1", "--timeout", "1"]).await;
    let body = json!({"prompt": "the", "max_tokens": 250, "ignore_eos": true, "n": 8});
    let (status, r, _) = s.post("/v1/completions", Some(KEY), &body).await;
    assert_eq!(status, 200, "{r}");
    let tokens: Vec<u64> = r["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["finish_reason"], "length");
            c["text"].as_str().unwrap().chars().count() as u64
        })
        .collect();
    assert!(tokens.iter().any(|&t| t < 250), "some sequences were cut at the deadline: {tokens:?}");
    assert!(s.metric("forja_deadline_exceeded_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_llama_folder_is_served_as_generate_decodes_it_alone_and_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    tiny_llama(dir.path(), 3);
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!((config["model_type"].as_str(), config["num_key_value_heads"].as_i64()), (Some("llama"), Some(2)));
    let (_vs, mut model, tok) = forja_model::load_gpt(dir.path(), Device::Cpu).unwrap();
    assert_eq!((model.cfg.arch, model.cfg.n_head, model.cfg.kv_heads()), (Arch::Llama, 4, 2));
    // The server (one engine thread) runs the projections on packed float32.
    model.pack_f32().unwrap();
    // Prompts of different lengths and answers of different lengths: with 3
    // slots for 5 sequences, some join the batch as others leave it.
    let prompts = [("the quick", 12), ("the lazy dog while the cat sleeps", 40), ("a", 25), ("sun and the birds sing ", 33), ("fox", 18)];
    let s = Server::start(Some(dir.path()), &["--max-batch", "3"]).await;
    let text = |r: &Value| r["choices"][0]["text"].as_str().unwrap().to_string();
    let mut alone = Vec::new();
    for (prompt, n) in prompts {
        let (status, r, _) = s.post("/v1/completions", Some(KEY), &completion(prompt, n)).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["usage"]["completion_tokens"], n, "{r}");
        // Greedy decoding through the slot cache is what `generate` decodes with its own cache.
        let sampling = forja_model::SamplingConfig { temperature: 0.0, max_new_tokens: n, ..Default::default() };
        let ids = forja_model::generate(&model, &tok.encode(prompt).unwrap(), None, &sampling).unwrap();
        assert_eq!(ids.len(), n);
        assert_eq!(text(&r), tok.decode_text(&ids).unwrap(), "prompt {prompt:?}");
        alone.push(text(&r));
    }
    assert!(alone.iter().collect::<std::collections::HashSet<_>>().len() > 1, "different prompts, different answers: {alone:?}");
    let single_steps = s.metric("forja_batch_size_per_step_count").await;
    let bodies = prompts.map(|(prompt, n)| completion(prompt, n));
    let together = bodies.iter().map(|body| s.post("/v1/completions", Some(KEY), body));
    let results = futures_util::future::join_all(together).await;
    for ((status, r, _), (want, (prompt, _))) in results.iter().zip(alone.iter().zip(prompts)) {
        assert_eq!(*status, 200, "{r}");
        assert_eq!(&text(r), want, "prompt {prompt:?} in a batch");
    }
    // Concurrent requests share steps only when they overlap, which a fast
    // engine need not see; the prompts of one request are admitted together,
    // so they share decoding steps for certain (3 slots for 5 sequences).
    let (n, before) = (20, s.metric("forja_batch_size_per_step_count").await);
    let (status, r, _) = s.post("/v1/completions", Some(KEY), &completion(prompts.map(|(p, _)| p), n)).await;
    assert_eq!(status, 200, "{r}");
    for (i, (prompt, _)) in prompts.iter().enumerate() {
        let sampling = forja_model::SamplingConfig { temperature: 0.0, max_new_tokens: n, ..Default::default() };
        let ids = forja_model::generate(&model, &tok.encode(prompt).unwrap(), None, &sampling).unwrap();
        let choice = r["choices"].as_array().unwrap().iter().find(|c| c["index"] == i).unwrap();
        assert_eq!(choice["text"].as_str().unwrap(), tok.decode_text(&ids).unwrap(), "prompt {prompt:?} of one request");
    }
    let steps = s.metric("forja_batch_size_per_step_count").await - before;
    assert!(steps < (5 * n) as f64 * 0.7, "{steps} steps for 5 sequences of {n} tokens: they did not share steps");
    let (_, metrics) = s.get("/metrics", None).await;
    let value = |line: &str| metrics.lines().find(|l| l.starts_with(line)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap();
    let (all, of_one) = (value("forja_batch_size_per_step_count"), value("forja_batch_size_per_step_bucket{le=\"1\"}"));
    assert!(all > of_one, "no step decoded more than one sequence ({all} steps, {of_one} of one; {single_steps} alone)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int8_weights_decode_as_generate_does_alone_and_in_a_batch_and_a_quantized_folder_serves_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, make) in [("gpt2", tiny_model as fn(&Path, i64)), ("llama", tiny_llama)] {
        let (plain, quant) = (tmp.path().join(name), tmp.path().join(format!("{name}-int8")));
        make(&plain, 5);
        forja_model::quant::write_quantized_folder(&plain, &quant).unwrap();
        let (_vs, mut model, tok) = forja_model::load_gpt(&plain, Device::Cpu).unwrap();
        model.quantize(forja_model::Quantization::Int8).unwrap();
        let from_flag = Server::start(Some(&plain), &["--quantize", "int8", "--max-batch", "3"]).await;
        let from_folder = Server::start(Some(&quant), &[]).await;
        for s in [&from_flag, &from_folder] {
            let (_, models) = s.get("/v1/models", Some(KEY)).await;
            assert_eq!(serde_json::from_str::<Value>(&models).unwrap()["data"][0]["quantization"], "int8", "{name}");
        }
        let prompts = [("the quick", 20), ("the lazy dog while the cat sleeps", 30), ("a", 25), ("sun and the birds sing ", 16)];
        let mut alone = Vec::new();
        for (prompt, n) in prompts {
            let (status, r, _) = from_flag.post("/v1/completions", Some(KEY), &completion(prompt, n)).await;
            assert_eq!(status, 200, "{r}");
            let sampling = forja_model::SamplingConfig { temperature: 0.0, max_new_tokens: n, ..Default::default() };
            let ids = forja_model::generate(&model, &tok.encode(prompt).unwrap(), None, &sampling).unwrap();
            assert_eq!(text_of(&r), tok.decode_text(&ids).unwrap(), "{name}: {prompt:?} served int8 vs generate on the int8 model");
            let (_, r2, _) = from_folder.post("/v1/completions", Some(KEY), &completion(prompt, n)).await;
            assert_eq!(text_of(&r2), text_of(&r), "{name}: {prompt:?} from the quantized folder");
            alone.push(text_of(&r));
        }
        let bodies = prompts.map(|(prompt, n)| completion(prompt, n));
        let together = futures_util::future::join_all(bodies.iter().map(|b| from_flag.post("/v1/completions", Some(KEY), b))).await;
        for ((status, r, _), want) in together.iter().zip(&alone) {
            assert_eq!(*status, 200, "{r}");
            assert_eq!(&text_of(r), want, "{name}: the same tokens in a batch of int8 rows");
        }
    }
    // An encoder has no int8 path: refused at start, saying so.
    let argv = ["forja-serve", &minilm().display().to_string(), "--no-auth", "--quantize", "int8"];
    let err = forja_serve::build(&Cli::parse_from(argv).args).err().unwrap().to_string();
    assert!(err.contains("int8 serving is for decoders"), "{err}");
}

#[test]
fn only_safetensors_weights_are_loaded() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path(), 1);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"a pickle").unwrap();
    let err = forja_serve::model::load(dir.path(), &forja_serve::model::LoadOptions::cpu()).err().unwrap().to_string();
    assert!(err.contains("only safetensors weights are served") && err.contains("pytorch_model.bin"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_scores_the_prompt_as_generation_scored_its_tokens() {
    let s = Server::start(None, &[]).await;
    // Greedy generation reports each new token's log-probability ...
    let (_, g, _) = s
        .post(
            "/v1/completions",
            Some(KEY),
            &json!({"prompt": "the fox", "max_tokens": 4, "temperature": 0, "ignore_eos": true, "logprobs": 2}),
        )
        .await;
    let gen = &g["choices"][0];
    let text = gen["text"].as_str().unwrap();
    // ... and scoring prompt + those tokens with echo gives the same numbers.
    let whole = format!("the fox{text}");
    let (status, e, _) =
        s.post("/v1/completions", Some(KEY), &json!({"prompt": whole, "max_tokens": 0, "echo": true, "logprobs": 2})).await;
    assert_eq!(status, 200, "{e}");
    let c = &e["choices"][0];
    assert_eq!(c["text"], whole.as_str());
    assert_eq!(c["finish_reason"], "length");
    let lps = c["logprobs"]["token_logprobs"].as_array().unwrap();
    assert_eq!(lps.len(), whole.chars().count(), "one entry per prompt token (characters here)");
    assert!(lps[0].is_null() && c["logprobs"]["top_logprobs"][0].is_null(), "the first token has no log-probability");
    let generated = gen["logprobs"]["token_logprobs"].as_array().unwrap();
    for (a, b) in lps[lps.len() - 4..].iter().zip(generated) {
        assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4, "{a} vs {b}");
    }
    assert_eq!(c["logprobs"]["top_logprobs"][1].as_object().unwrap().len(), 2);
    // Echo with generation: the prompt, then the completion (lm-eval's log-likelihood request).
    let (_, e, _) = s
        .post("/v1/completions", Some(KEY), &json!({"prompt": "the fox", "max_tokens": 1, "echo": true, "logprobs": 1, "temperature": 0}))
        .await;
    let c = &e["choices"][0];
    assert!(c["text"].as_str().unwrap().starts_with("the fox"));
    assert_eq!(c["logprobs"]["token_logprobs"].as_array().unwrap().len(), 8);
    // vLLM's tokenizer routes, which lm-eval's remote tokenizer uses.
    let (_, t, _) = s.post("/tokenize", Some(KEY), &json!({"prompt": "the fox", "add_special_tokens": false})).await;
    assert_eq!(t["count"], 7);
    let (_, d, _) = s.post("/detokenize", Some(KEY), &json!({"tokens": t["tokens"]})).await;
    assert_eq!(d["prompt"], "the fox");
    let (status, info) = s.get("/tokenizer_info", Some(KEY)).await;
    assert_eq!(status, 200);
    assert!(info.contains("\"eos_token\":\"<|endoftext|>\""), "{info}");
    assert_eq!(s.post("/detokenize", Some(KEY), &json!({"tokens": [999999]})).await.0, 400);
}
