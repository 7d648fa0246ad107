//! `forja-serve MODEL_DIR [--host H] [--port P] …`: the OpenAI-compatible server.

use clap::Parser;

#[derive(Parser)]
#[command(name = "forja-serve", about = "Serve a forja model folder over an OpenAI-compatible HTTP API", version)]
struct Cli {
    #[command(flatten)]
    serve: forja_serve::ServeArgs,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    forja_serve::run(cli.serve)
}
