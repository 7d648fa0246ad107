#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! Two ranks in one process (one thread each) on loopback: the store, the
//! Gloo collectives and the configuration agreement, on libtorch's c10d.

use forja_dist::{Dist, Launch, Launcher};
use std::time::Duration;
use tch::Tensor;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn launch(rank: usize, port: u16) -> Launch {
    Launch {
        launcher: Launcher::Torchrun,
        rank,
        world: 2,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        agent_store: false,
        restart: 0,
        iface: None,
    }
}

/// Runs `body` as ranks 0 and 1 at once; returns what each returned.
fn two_ranks<T: Send + 'static>(body: fn(Dist) -> T) -> (T, T) {
    let port = free_port();
    let r0 = std::thread::spawn(move || body(Dist::connect(launch(0, port), Duration::from_secs(20)).unwrap()));
    let r1 = std::thread::spawn(move || body(Dist::connect(launch(1, port), Duration::from_secs(20)).unwrap()));
    (r0.join().unwrap(), r1.join().unwrap())
}

#[test]
fn allreduce_broadcast_and_barrier() {
    let (a, b) = two_ranks(|d| {
        let t = Tensor::from_slice(&[1.0f32 + d.rank() as f32, 10.0 * (d.rank() as f32 + 1.0)]);
        d.allreduce_sum(&t).unwrap();
        let s = Tensor::from_slice(&[d.rank() as f32 + 5.0]);
        d.broadcast(&s, 1).unwrap();
        d.barrier().unwrap();
        (Vec::<f32>::try_from(&t).unwrap(), Vec::<f32>::try_from(&s).unwrap())
    });
    assert_eq!(a.0, vec![3.0, 30.0]);
    assert_eq!(a, b);
    assert_eq!(a.1, vec![6.0]);
}

#[test]
fn differing_configurations_are_refused_naming_the_key() {
    let (a, b) = two_ranks(|d| {
        let lr = if d.rank() == 0 { 0.001 } else { 0.002 };
        let same = d.agree("configuration", &serde_json::json!({"seed": 1})).map_err(|e| e.to_string());
        let differs = d.agree("configuration", &serde_json::json!({"train": {"optim": {"lr": lr}}, "seed": 1})).map_err(|e| e.to_string());
        (same, differs)
    });
    assert!(a.0.is_ok() && b.0.is_ok());
    let e = b.1.unwrap_err();
    assert!(e.contains("rank 1 refuses to start") && e.contains("train.optim.lr: 0.002 here, 0.001 on rank 0"), "{e}");
    assert!(a.1.unwrap_err().contains("train.optim.lr: 0.001 here, 0.002 on rank 1"));
}
