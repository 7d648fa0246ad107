//! Which rank this process is, read from the variables the launchers set
//! (`torchrun`, Slurm's `srun`, `forja run --nproc`). Forming the group is
//! `forja-dist`'s; this is what every crate may read without libtorch (the
//! stage adapter gives a rank other than 0 a scratch folder).

/// A launcher variable missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {var}: {problem}")]
pub struct LaunchError {
    pub var: &'static str,
    pub problem: String,
}

/// Who started the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `torchrun` (or `forja run --nproc`, which sets the same variables).
    Torchrun,
    /// Slurm's `srun`: a step's `SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`
    /// (else `SLURM_NTASKS`), `SLURM_LOCALID`.
    Slurm,
}

/// This process's place among the ranks and where they meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub launcher: Launcher,
    pub rank: usize,
    pub world: usize,
    /// Rank on this machine (picks the GPU, `cuda:LOCAL_RANK`).
    pub local_rank: usize,
    /// Host and port of the rendezvous store.
    pub master_addr: String,
    pub master_port: u16,
    /// The launcher's agent already hosts the store (torchrun sets
    /// `TORCHELASTIC_USE_AGENT_STORE`): every rank is a client of it.
    pub agent_store: bool,
    /// How many times the launcher restarted the job (keys of each attempt
    /// are kept apart in the store).
    pub restart: u64,
    /// `GLOO_SOCKET_IFNAME`: the network interface the collectives use.
    pub iface: Option<String>,
}

/// `MASTER_PORT` when none is given (torchrun's default).
pub const DEFAULT_PORT: u16 = 29500;

impl Launch {
    /// From this process's environment; `None` when it was not launched as
    /// one of several ranks.
    pub fn from_env() -> Result<Option<Launch>, LaunchError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// This process's rank and the world size (`(0, 1)` when launched alone
    /// or when the variables are malformed: forming the group reports that).
    /// Read once: a launcher sets them before the process starts.
    pub fn rank_and_world() -> (usize, usize) {
        static RANK_AND_WORLD: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
        *RANK_AND_WORLD.get_or_init(|| match Self::from_env() {
            Ok(Some(l)) => (l.rank, l.world),
            _ => (0, 1),
        })
    }

    /// From variables looked up by `var` (`RANK`/`WORLD_SIZE` first, then
    /// Slurm's); a world of one is no group.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>, LaunchError> {
        let launch = if var("RANK").is_some() || var("WORLD_SIZE").is_some() {
            let world = number(&var, "WORLD_SIZE")?;
            let rank = number(&var, "RANK")?;
            let local_rank = optional_number(&var, "LOCAL_RANK")?.unwrap_or(0);
            let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".to_string());
            let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            let restart = optional_number(&var, "TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0) as u64;
            Launch { launcher: Launcher::Torchrun, rank, world, local_rank, master_addr, master_port: 0, agent_store, restart, iface: None }
        } else if var("SLURM_STEP_ID").is_some() && var("SLURM_PROCID").is_some() {
            // A task of an `srun` step (a batch script itself also sees
            // SLURM_PROCID and SLURM_NTASKS, but is one process: no step id).
            let world = match optional_number(&var, "SLURM_STEP_NUM_TASKS")? {
                Some(n) => n,
                None => number(&var, "SLURM_NTASKS")?,
            };
            let rank = number(&var, "SLURM_PROCID")?;
            let local_rank = optional_number(&var, "SLURM_LOCALID")?.unwrap_or(0);
            if world == 1 {
                return Ok(None);
            }
            let master_addr = match var("MASTER_ADDR") {
                Some(a) => a,
                None => {
                    let list = var("SLURM_STEP_NODELIST").or_else(|| var("SLURM_JOB_NODELIST")).or_else(|| var("SLURM_NODELIST")).ok_or(
                        LaunchError {
                            var: "SLURM_JOB_NODELIST",
                            problem: "not set (the first host of the job's node list hosts the rendezvous)".into(),
                        },
                    )?;
                    first_slurm_host(&list)
                        .ok_or_else(|| LaunchError { var: "SLURM_JOB_NODELIST", problem: format!("`{list}` names no host") })?
                }
            };
            let restart = optional_number(&var, "SLURM_RESTART_COUNT")?.unwrap_or(0) as u64;
            Launch {
                launcher: Launcher::Slurm,
                rank,
                world,
                local_rank,
                master_addr,
                master_port: 0,
                agent_store: false,
                restart,
                iface: None,
            }
        } else {
            return Ok(None);
        };
        if launch.world == 0 || launch.rank >= launch.world {
            return Err(LaunchError { var: "RANK", problem: format!("rank {} is not below the world size {}", launch.rank, launch.world) });
        }
        if launch.world == 1 {
            return Ok(None);
        }
        let master_port = match var("MASTER_PORT") {
            None => DEFAULT_PORT,
            Some(p) => p.trim().parse().map_err(|_| LaunchError { var: "MASTER_PORT", problem: format!("`{p}` is not a port") })?,
        };
        let iface = var("GLOO_SOCKET_IFNAME").filter(|s| !s.is_empty());
        Ok(Some(Launch { master_port, iface, ..launch }))
    }

    /// Whether the rendezvous host is this machine's loopback (the Gloo
    /// device then binds to 127.0.0.1 too).
    pub fn loopback(&self) -> bool {
        self.master_addr == "localhost" || self.master_addr.starts_with("127.") || self.master_addr == "::1"
    }
}

fn number(var: &impl Fn(&str) -> Option<String>, name: &'static str) -> Result<usize, LaunchError> {
    optional_number(var, name)?.ok_or(LaunchError { var: name, problem: "not set".into() })
}

fn optional_number(var: &impl Fn(&str) -> Option<String>, name: &'static str) -> Result<Option<usize>, LaunchError> {
    match var(name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| LaunchError { var: name, problem: format!("`{v}` is not a whole number") }),
    }
}

/// The first host of a Slurm host list: `node[07-09,12],gpu3` → `node07`.
pub fn first_slurm_host(list: &str) -> Option<String> {
    let list = list.trim();
    // The first entry ends at a comma outside brackets.
    let mut depth = 0;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            c == ',' && depth == 0
        })
        .map_or(list.len(), |(i, _)| i);
    let first = &list[..end];
    let host = match first.find('[') {
        None => first.to_string(),
        Some(open) => {
            let close = first[open..].find(']')? + open;
            let range = first[open + 1..close].split(',').next()?;
            let lo = range.split('-').next()?;
            format!("{}{}{}", &first[..open], lo, &first[close + 1..])
        }
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly on purpose
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>, LaunchError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Launch::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn torchrun_variables() {
        let l = launch(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29611"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (l.launcher, l.rank, l.world, l.local_rank, l.master_port, l.agent_store, l.restart),
            (Launcher::Torchrun, 1, 2, 1, 29611, true, 2)
        );
        assert!(l.loopback());
    }

    #[test]
    fn slurm_variables_and_host_lists() {
        let l = launch(&[
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_STEP_NUM_TASKS", "4"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[07-09,12],cpu1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (l.launcher, l.rank, l.world, l.local_rank, l.master_addr.as_str(), l.master_port),
            (Launcher::Slurm, 3, 4, 1, "gpu07", DEFAULT_PORT)
        );
        assert_eq!(first_slurm_host("node1"), Some("node1".into()));
        assert_eq!(first_slurm_host("a-[3-4]-x,b"), Some("a-3-x".into()));
        assert_eq!(first_slurm_host(""), None);
    }

    #[test]
    fn alone_or_malformed() {
        assert_eq!(launch(&[]).unwrap(), None);
        assert_eq!(launch(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(), None);
        assert_eq!(launch(&[("SLURM_STEP_ID", "0"), ("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]).unwrap(), None);
        // The batch script of a 4-task allocation is one process, not rank 0 of 4.
        assert_eq!(launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4"), ("SLURM_JOB_NODELIST", "n1")]).unwrap(), None);
        let e = launch(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert!(e.contains("rank 2 is not below the world size 2"), "{e}");
        let e = launch(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert!(e.contains("RANK: `x` is not a whole number"), "{e}");
        let e = launch(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "99999")]).unwrap_err().to_string();
        assert!(e.contains("MASTER_PORT"), "{e}");
    }
}
