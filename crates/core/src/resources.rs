//! What a stage cost the machine: CPU time of this process and an energy
//! estimate from it.
//!
//! The estimate is CPU-seconds × a power per busy core. The default, 10 W, is
//! the order of magnitude the Green Algorithms calculator (Lannelongue et al.
//! 2021) uses per core of server CPUs; it leaves out memory, disk, network and
//! the data centre's overhead (PUE), so read it as a lower bound for
//! comparisons between runs on the same machine, not as a measurement.

/// Watts per busy core assumed by [`energy_wh`].
pub const WATTS_PER_CORE: f64 = 10.0;

/// User + system CPU seconds this process has used so far (Linux; 0 elsewhere).
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which may hold spaces, inside parentheses).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after `)`; in
    // clock ticks of USER_HZ, which Linux fixes at 100 for user space.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Energy estimate in watt-hours of `cpu_s` CPU-seconds.
pub fn energy_wh(cpu_s: f64) -> f64 {
    cpu_s * WATTS_PER_CORE / 3600.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_grows_with_work() {
        let before = super::cpu_seconds();
        let mut x = 0u64;
        let t0 = std::time::Instant::now();
        while t0.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        assert!(x != 1);
        let spent = super::cpu_seconds() - before;
        assert!(spent > 0.1, "300 ms of busy work counted {spent} CPU seconds");
        assert!((super::energy_wh(3600.0) - super::WATTS_PER_CORE).abs() < 1e-9);
    }
}
