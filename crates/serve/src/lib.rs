//! forja-serve: an OpenAI-compatible server for forja's models.
//!
//! - [`http`]: the routes (completions, chat, embeddings, models, feedback,
//!   health, metrics, OpenAPI, the chat page, admin reload), auth and limits
//!   per request, server-sent events;
//! - [`api`]: OpenAI request shapes and their validation;
//! - [`engine`]: continuous batching over a paged KV cache on one thread;
//! - [`blocks`]: the paged cache's blocks, reference counts and prefix cache;
//! - [`model`]: loading a model folder (safetensors only), its id and hash;
//! - [`auth`]: hashed API keys, per-key request and token limits;
//! - [`drift`]: prompt-token drift against the training tokens (PSI, JS);
//! - [`feedback`]: ratings and preferences artifacts from users' feedback;
//! - [`metrics`]: Prometheus metrics.

pub mod api;
pub mod auth;
pub mod blocks;
pub mod drift;
pub mod engine;
pub mod error;
pub mod feedback;
pub mod http;
pub mod metrics;
pub mod model;

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Command-line options of `forja-serve` and `forja serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The model folder (model.safetensors + config.json + tokenizer.json).
    pub model_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed when ready).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The id the model is served under (default: its folder's name, or the
    /// parent's for a folder named `model`).
    #[arg(long)]
    pub model_id: Option<String>,
    /// API keys, one per line (added to FORJA_API_KEYS, comma-separated).
    #[arg(long)]
    pub api_keys: Option<PathBuf>,
    /// Admin keys, one per line (added to FORJA_ADMIN_KEY, comma-separated).
    #[arg(long)]
    pub admin_keys: Option<PathBuf>,
    /// Serve without API keys (local use only).
    #[arg(long)]
    pub no_auth: bool,
    /// Requests per minute per key (0: unlimited).
    #[arg(long, default_value_t = 600)]
    pub requests_per_minute: u32,
    /// Prompt plus requested completion tokens per minute per key (0: unlimited).
    #[arg(long, default_value_t = 1_000_000)]
    pub tokens_per_minute: u32,
    /// Sequences decoded together (continuous batching); 1 serves one at a time.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Sequences that may wait for a place in the batch; more are refused with 429.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Memory for keys and values, in MiB (default: --max-batch full contexts).
    /// Sequences are admitted while it has free blocks for their prompts.
    #[arg(long)]
    pub kv_cache_mb: Option<f64>,
    /// `paged` (blocks of --kv-block-tokens, given out as sequences grow) or
    /// `slots` (one full context per sequence, no prefix caching).
    #[arg(long, default_value = "paged", value_parser = ["paged", "slots"])]
    pub kv_layout: String,
    /// Positions per block of the paged cache.
    #[arg(long, default_value_t = 16)]
    pub kv_block_tokens: usize,
    /// Do not reuse cached prefixes (every prompt is computed in full).
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Seconds a request may take before its generation is cut.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    #[arg(long, default_value_t = 8192)]
    pub max_prompt_tokens: usize,
    #[arg(long, default_value_t = 2048)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 8)]
    pub max_n: usize,
    /// Where feedback artifacts (ratings.arrow, preferences.arrow) go.
    #[arg(long, default_value = "feedback")]
    pub feedback_dir: PathBuf,
    /// Prompt tokens in the drift window.
    #[arg(long, default_value_t = 4096)]
    pub drift_window: usize,
    /// PSI above which drift is logged as a warning.
    #[arg(long, default_value_t = 0.2)]
    pub drift_threshold: f64,
    /// TLS certificate chain (PEM); with --tls-key, serves HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Log prompt texts (off by default: prompts may hold personal data).
    #[arg(long)]
    pub log_prompts: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `int8`: the decoder's projections and output head on per-channel int8
    /// weights (CPU), a quarter of the bytes read per token; `none`: float32.
    /// Default: as the folder is (int8 for a folder written by `forja stage
    /// quantize`).
    #[arg(long, value_parser = ["none", "int8"])]
    pub quantize: Option<String>,
    /// Run float32 projections on libtorch's GEMM instead of forja's packed
    /// single-threaded kernels (the default with --threads 1 on the CPU).
    #[arg(long)]
    pub no_packed_weights: bool,
    /// libtorch threads of the engine. 1 is fastest for small models (a
    /// decoding step is too small to split across threads, and the other cores
    /// serve HTTP: 2.7x the tokens/s of 2 threads on a 2-vCPU machine); raise it
    /// for large models on many cores; 0: libtorch's default.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// The resolved configuration of a server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model_id: Option<String>,
    /// int8 or float32 weights (`None`: as the folder is).
    pub quantize: Option<forja_model::Quantization>,
    /// float32 projections packed for forja's single-threaded CPU kernels
    /// (with one engine thread).
    pub pack: bool,
    pub device: tch::Device,
    pub auth: auth::AuthConfig,
    pub limits: api::Limits,
    pub engine: engine::EngineConfig,
    pub drift: drift::DriftConfig,
    pub request_timeout: Duration,
    pub log_prompts: bool,
}

impl ServeArgs {
    /// Resolves keys (files and environment) and limits.
    pub fn config(&self) -> anyhow::Result<ServeConfig> {
        let mut api_keys = std::env::var("FORJA_API_KEYS").map(|v| auth::split_keys(&v)).unwrap_or_default();
        if let Some(f) = &self.api_keys {
            api_keys.extend(auth::read_keys(f)?);
        }
        let mut admin_keys = std::env::var("FORJA_ADMIN_KEY").map(|v| auth::split_keys(&v)).unwrap_or_default();
        if let Some(f) = &self.admin_keys {
            admin_keys.extend(auth::read_keys(f)?);
        }
        anyhow::ensure!(self.max_batch >= 1, "--max-batch must be at least 1");
        anyhow::ensure!(self.kv_block_tokens >= 1, "--kv-block-tokens must be at least 1");
        let kv_bytes = match self.kv_cache_mb {
            Some(mb) if !(mb.is_finite() && mb > 0.0) => anyhow::bail!("--kv-cache-mb must be a positive number of MiB, got {mb}"),
            Some(mb) => Some((mb * f64::from(1 << 20)) as usize),
            None => None,
        };
        let kv = engine::KvConfig {
            bytes: kv_bytes,
            layout: if self.kv_layout == "slots" { engine::KvLayout::Slots } else { engine::KvLayout::Paged(self.kv_block_tokens) },
            prefix_cache: !self.no_prefix_cache,
        };
        let limits = api::Limits {
            max_body_bytes: self.max_body_bytes,
            max_prompt_tokens: self.max_prompt_tokens,
            max_tokens: self.max_tokens,
            max_n: self.max_n,
            ..Default::default()
        };
        Ok(ServeConfig {
            model_id: self.model_id.clone(),
            quantize: self.quantize.as_deref().map(str::parse).transpose()?,
            pack: self.threads == 1 && !self.no_packed_weights,
            device: forja_model::parse_device(&self.device)?,
            auth: auth::AuthConfig {
                api_keys,
                admin_keys,
                no_auth: self.no_auth,
                requests_per_minute: self.requests_per_minute,
                tokens_per_minute: self.tokens_per_minute,
            },
            limits,
            engine: engine::EngineConfig { max_batch: self.max_batch, queue_capacity: self.queue, max_prefill_tokens: 4096, kv },
            drift: drift::DriftConfig {
                window: self.drift_window,
                min_tokens: 256.min(self.drift_window),
                psi_threshold: self.drift_threshold,
            },
            request_timeout: Duration::from_secs(self.timeout.max(1)),
            log_prompts: self.log_prompts,
        })
    }
}

/// Loads the model, starts the engine and builds the shared state.
pub fn build(args: &ServeArgs) -> anyhow::Result<Arc<http::AppState>> {
    let cfg = args.config()?;
    if args.threads > 0 {
        tch::set_num_threads(args.threads as i32);
    }
    let opts = model::LoadOptions { id: cfg.model_id.as_deref(), device: cfg.device, quantize: cfg.quantize, pack: cfg.pack };
    let (front, weights) = model::load(&args.model_dir, &opts)?;
    let front = Arc::new(front);
    let metrics = Arc::new(metrics::Metrics::new());
    let feedback = feedback::Feedback::open(&args.feedback_dir, 10_000)?;
    let engine = engine::start(front.clone(), weights, cfg.engine.clone(), metrics.clone())?;
    Ok(Arc::new(http::AppState::new(cfg, front, engine, metrics, feedback)?))
}

/// Serves on a runtime of its own (the entry point of `forja-serve` and
/// `forja serve`).
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(args))
}

/// Serves until SIGTERM or Ctrl-C; SIGHUP reloads the model folder.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let state = build(&args)?;
    let front = state.front();
    let app = http::router(state.clone());
    let addr: SocketAddr =
        format!("{}:{}", args.host, args.port).parse().with_context(|| format!("--host {} --port {}", args.host, args.port))?;
    spawn_reload_on_hangup(state.clone());
    let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        shutdown.graceful_shutdown(Some(Duration::from_secs(30)));
    });
    let announce = handle.clone();
    let (id, hash) = (front.id.clone(), front.hash.clone());
    let weights = if front.quantization == forja_model::Quantization::Int8 { ", int8 weights" } else { "" };
    tokio::spawn(async move {
        if let Some(bound) = announce.listening().await {
            eprintln!("forja-serve: listening on {scheme}://{bound} (model {id}, {hash}{weights})");
        }
    });
    let service = app.into_make_service();
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| format!("reading TLS certificate {} and key {}", cert.display(), key.display()))?;
            axum_server::bind_rustls(addr, tls).handle(handle).serve(service).await?;
        }
        _ => axum_server::bind(addr).handle(handle).serve(service).await?,
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn spawn_reload_on_hangup(state: Arc<http::AppState>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the model folder");
            if let Err(e) = http::reload(&state, None).await {
                tracing::error!("{}", e.message);
            }
        }
    });
}
