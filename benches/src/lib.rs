//! Home of the criterion benchmarks (`benches/bench_main.rs`); see `scripts/bench`
//! for the side-by-side comparison with PyTorch eager.
