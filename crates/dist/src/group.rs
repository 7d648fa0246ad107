//! The store, the Gloo group over it, and the process-wide pair with its
//! heartbeat (which names the rank that stopped when a collective fails).

use crate::ffi::{self, check};
use crate::{DistError, Launch};
use std::ffi::{c_void, CString};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tch::Tensor;

fn cstring(s: &str) -> Result<CString, DistError> {
    CString::new(s).map_err(|_| DistError::C10d(format!("`{s}` holds a NUL byte")))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A client (or the host) of a c10d `TCPStore`, its keys under a prefix.
pub struct Store {
    ptr: *mut c_void,
}

// SAFETY: c10d's TCPStore serialises its operations internally; the handle is
// only freed on drop.
unsafe impl Send for Store {}
// SAFETY: as above: every operation locks inside c10d.
unsafe impl Sync for Store {}

impl Store {
    /// Connects to the store at `host:port` (`serve`: hosts it), waiting up
    /// to `timeout` for it and for each key asked for.
    pub fn connect(host: &str, port: u16, serve: bool, prefix: &str, timeout: Duration) -> Result<Store, DistError> {
        let (host_c, prefix_c) = (cstring(host)?, cstring(prefix)?);
        let mut ptr = std::ptr::null_mut();
        // SAFETY: valid C strings and an out pointer the shim fills on success.
        check(unsafe { ffi::forja_c10d_store_new(host_c.as_ptr(), port, i32::from(serve), prefix_c.as_ptr(), millis(timeout), &mut ptr) })
            .map_err(|e| DistError::C10d(format!("rendezvous store at {host}:{port}: {e}")))?;
        Ok(Store { ptr })
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let key = CString::new(key).map_err(|e| e.to_string())?;
        // SAFETY: live handle, valid key, `value` readable for its length.
        check(unsafe { ffi::forja_c10d_store_set(self.ptr, key.as_ptr(), value.as_ptr(), value.len()) })
    }

    /// Waits for `key` (up to the store's timeout).
    pub fn get(&self, key: &str) -> Result<Vec<u8>, String> {
        let key = CString::new(key).map_err(|e| e.to_string())?;
        let (mut data, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: live handle; on success `data` is a malloc'd buffer of `len` bytes we free below.
        check(unsafe { ffi::forja_c10d_store_get(self.ptr, key.as_ptr(), &mut data, &mut len) })?;
        // SAFETY: the shim filled `data` with `len` initialised bytes.
        let value = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        // SAFETY: the buffer came from the shim's malloc and is freed once, after the copy.
        unsafe { ffi::forja_c10d_free_bytes(data) };
        Ok(value)
    }

    /// Whether `key` is set now.
    pub fn check(&self, key: &str) -> Result<bool, String> {
        let key = CString::new(key).map_err(|e| e.to_string())?;
        let mut present = 0;
        // SAFETY: live handle, valid key and out pointer.
        check(unsafe { ffi::forja_c10d_store_check(self.ptr, key.as_ptr(), &mut present) })?;
        Ok(present != 0)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: the handle came from forja_c10d_store_new and is freed once.
        unsafe { ffi::forja_c10d_store_free(self.ptr) };
    }
}

/// libtorch's `ProcessGroupGloo` over a store.
pub struct Group {
    ptr: *mut c_void,
}

// SAFETY: c10d process groups are used from one thread at a time here (the
// training loop's); the handle is only freed on drop.
unsafe impl Send for Group {}
// SAFETY: as above: the training loop alone calls the collectives.
unsafe impl Sync for Group {}

impl Group {
    /// The Gloo group of `world` ranks meeting in `store`.
    pub fn gloo(store: &Store, rank: usize, world: usize, bind_host: &str, iface: &str, timeout: Duration) -> Result<Group, String> {
        let (bind_c, iface_c) = (CString::new(bind_host).map_err(|e| e.to_string())?, CString::new(iface).map_err(|e| e.to_string())?);
        let (rank, world) = (i32::try_from(rank).map_err(|e| e.to_string())?, i32::try_from(world).map_err(|e| e.to_string())?);
        let mut ptr = std::ptr::null_mut();
        // SAFETY: live store handle, valid strings, out pointer filled on success.
        check(unsafe { ffi::forja_c10d_gloo_new(store.ptr, rank, world, bind_c.as_ptr(), iface_c.as_ptr(), millis(timeout), &mut ptr) })?;
        Ok(Group { ptr })
    }

    /// Sums `t` across the ranks, in place (`t` must be contiguous).
    pub fn allreduce_sum(&self, t: &Tensor) -> Result<(), String> {
        // SAFETY: live group; the tensor handle outlives the call, and the
        // collective writes into its storage, which tch shares.
        check(unsafe { ffi::forja_c10d_allreduce_sum(self.ptr, t.as_ptr() as *mut c_void) })
    }

    /// Copies rank `root`'s `t` into every rank's, in place.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), String> {
        let root = i32::try_from(root).map_err(|e| e.to_string())?;
        // SAFETY: as for allreduce_sum.
        check(unsafe { ffi::forja_c10d_broadcast(self.ptr, t.as_ptr() as *mut c_void, root) })
    }

    pub fn barrier(&self) -> Result<(), String> {
        // SAFETY: live group.
        check(unsafe { ffi::forja_c10d_barrier(self.ptr) })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the handle came from forja_c10d_gloo_new and is freed once.
        unsafe { ffi::forja_c10d_group_free(self.ptr) };
    }
}

/// Gradient sums that start during the backward pass (see `Overlap` in
/// `cpp/c10d_shim.cpp`): hooks on the parameters' gradient accumulators.
pub struct Overlap {
    ptr: *mut c_void,
    dist: &'static Dist,
}

// SAFETY: the handle is used by the training loop's thread only (its hooks
// run on the autograd engine, inside that thread's backward call on CPU).
unsafe impl Send for Overlap {}

impl Overlap {
    /// The next backward pass starts summing buckets as they become ready.
    pub fn arm(&self) -> Result<(), DistError> {
        // SAFETY: live handle.
        check(unsafe { ffi::forja_c10d_overlap_arm(self.ptr) }).map_err(|e| self.dist.failed("preparing the gradient sums", &e))
    }

    /// Waits for every bucket and writes the sums into the parameters' `.grad`.
    pub fn finish(&self) -> Result<(), DistError> {
        // SAFETY: live handle.
        check(unsafe { ffi::forja_c10d_overlap_finish(self.ptr) }).map_err(|e| self.dist.failed("summing gradients", &e))
    }
}

impl Drop for Overlap {
    fn drop(&mut self) {
        // SAFETY: the handle came from forja_c10d_overlap_new and is freed once.
        unsafe { ffi::forja_c10d_overlap_free(self.ptr) };
    }
}

/// How often every rank writes its heartbeat into the store.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A rank whose heartbeat is older than this has stopped.
const STALE_AFTER: Duration = Duration::from_secs(4);

/// This process's place in the job, its store and its group.
pub struct Dist {
    pub launch: Launch,
    pub timeout: Duration,
    store: Store,
    group: Group,
    /// Exchanges through the store so far (each gets its own keys).
    exchanges: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Dist {
    /// Meets the other ranks: rank 0 hosts the store (unless the launcher's
    /// agent does), every rank connects, the Gloo group forms, and a thread
    /// keeps this rank's heartbeat.
    pub fn connect(launch: Launch, timeout: Duration) -> Result<Dist, DistError> {
        let serve = launch.rank == 0 && !launch.agent_store;
        let prefix = format!("forja/attempt_{}/", launch.restart);
        let store = Store::connect(&launch.master_addr, launch.master_port, serve, &prefix, timeout)?;
        let bind = if launch.loopback() { "127.0.0.1" } else { "" };
        let iface = launch.iface.clone().unwrap_or_default();
        let group = Group::gloo(&store, launch.rank, launch.world, bind, &iface, timeout).map_err(|e| {
            DistError::C10d(format!(
                "rank {} of {}: forming the Gloo group through {}:{} failed: {e}",
                launch.rank, launch.world, launch.master_addr, launch.master_port
            ))
        })?;
        let beat = Store::connect(&launch.master_addr, launch.master_port, false, &prefix, timeout)?;
        let key = format!("heartbeat/{}", launch.rank);
        std::thread::Builder::new()
            .name("forja-heartbeat".into())
            .spawn(move || {
                while beat.set(&key, now_ms().to_string().as_bytes()).is_ok() {
                    std::thread::sleep(HEARTBEAT);
                }
            })
            .map_err(|e| DistError::C10d(format!("starting the heartbeat thread: {e}")))?;
        tracing::info!(
            rank = launch.rank,
            world = launch.world,
            "joined the process group at {}:{}",
            launch.master_addr,
            launch.master_port
        );
        Ok(Dist { launch, timeout, store, group, exchanges: AtomicU64::new(0) })
    }

    pub fn rank(&self) -> usize {
        self.launch.rank
    }

    pub fn world(&self) -> usize {
        self.launch.world
    }

    /// Sums `t` across the ranks, in place.
    pub fn allreduce_sum(&self, t: &Tensor) -> Result<(), DistError> {
        self.group.allreduce_sum(t).map_err(|e| self.failed("summing gradients", &e))
    }

    /// Copies rank `root`'s `t` to every rank.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), DistError> {
        self.group.broadcast(t, root).map_err(|e| self.failed("broadcasting", &e))
    }

    pub fn barrier(&self) -> Result<(), DistError> {
        self.group.barrier().map_err(|e| self.failed("waiting for every rank", &e))
    }

    /// Hooks `params` (trained leaves) so their gradients are summed across
    /// ranks while the backward pass runs, in buckets of about `bucket_numel`
    /// scalars formed in the order the first backward pass made them ready.
    pub fn overlap(&'static self, params: &[Tensor], bucket_numel: i64) -> Result<Overlap, DistError> {
        let ptrs: Vec<*mut c_void> = params.iter().map(|t| t.as_ptr() as *mut c_void).collect();
        let mut ptr = std::ptr::null_mut();
        // SAFETY: live group; the tensor handles are read during the call (the
        // shim keeps its own references).
        check(unsafe { ffi::forja_c10d_overlap_new(self.group.ptr, ptrs.as_ptr(), ptrs.len(), bucket_numel, &mut ptr) })
            .map_err(|e| DistError::C10d(format!("hooking the gradient accumulators: {e}")))?;
        Ok(Overlap { ptr, dist: self })
    }

    /// Checks that every rank holds the same `value` (configuration, code and
    /// input hashes): each publishes its own, and each compares with every
    /// other; a difference names the keys that differ and their values.
    pub fn agree(&self, what: &str, value: &serde_json::Value) -> Result<(), DistError> {
        let mine = serde_json::to_vec(value).map_err(|e| DistError::C10d(e.to_string()))?;
        let all = self.all_gather_bytes(what, &mine)?;
        for (r, theirs) in all.iter().enumerate().filter(|&(r, _)| r != self.rank()) {
            let theirs: serde_json::Value = serde_json::from_slice(theirs).map_err(|e| DistError::C10d(e.to_string()))?;
            let diffs = differences(value, &theirs, "");
            if !diffs.is_empty() {
                let mut msg = format!("rank {} refuses to start: its {what} differs from rank {r}'s:", self.rank());
                for (path, here, there) in diffs.iter().take(8) {
                    let _ = write!(msg, "\n  {path}: {here} here, {there} on rank {r}");
                }
                return Err(DistError::Mismatch(msg));
            }
        }
        Ok(())
    }

    /// Every rank's `mine`, in rank order (through the store: for small,
    /// uneven payloads such as a rollout's token sequences).
    pub fn all_gather_bytes(&self, what: &str, mine: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        let n = self.exchanges.fetch_add(1, Ordering::SeqCst);
        let key = |r: usize| format!("gather/{n}/{r}");
        self.store.set(&key(self.rank()), mine).map_err(|e| self.failed(&format!("publishing {what}"), &e))?;
        let mut all = Vec::with_capacity(self.world());
        for r in 0..self.world() {
            if r == self.rank() {
                all.push(mine.to_vec());
            } else {
                all.push(self.store.get(&key(r)).map_err(|e| self.failed(&format!("reading rank {r}'s {what}"), &e))?);
            }
        }
        // No rank leaves (rank 0 taking the store with it) before all have read.
        self.barrier()?;
        Ok(all)
    }

    /// The error of a failed collective, with the ranks that stopped (a
    /// peer's death is seen at once, its heartbeat goes stale a few seconds
    /// later: wait for that, up to a little longer than it takes).
    pub(crate) fn failed(&self, what: &str, cause: &str) -> DistError {
        let deadline = std::time::Instant::now() + STALE_AFTER + 2 * HEARTBEAT;
        let who = loop {
            let (who, known) = self.who_stopped();
            if known || std::time::Instant::now() > deadline {
                break who;
            }
            std::thread::sleep(HEARTBEAT / 2);
        };
        DistError::C10d(format!(
            "rank {} of {}: {what} failed: {who}; c10d: {}",
            self.rank(),
            self.world(),
            cause.lines().next().unwrap_or(cause)
        ))
    }

    /// Which ranks stopped, from their heartbeats in the store, and whether
    /// that names one.
    pub fn who_stopped(&self) -> (String, bool) {
        let mut stopped = Vec::new();
        let now = now_ms();
        for r in (0..self.world()).filter(|&r| r != self.rank()) {
            let key = format!("heartbeat/{r}");
            match self.store.check(&key) {
                Err(_) if !self.launch.agent_store => {
                    return ("rank 0 stopped (the rendezvous store it hosts is gone)".into(), true);
                }
                Err(e) => return (format!("the launcher's rendezvous store is unreachable ({e})"), false),
                Ok(false) => stopped.push(format!("rank {r} (never joined)")),
                Ok(true) => {
                    let seen = self.store.get(&key).ok().and_then(|v| String::from_utf8_lossy(&v).parse::<u64>().ok());
                    if let Some(seen) = seen {
                        let age = Duration::from_millis(now.saturating_sub(seen));
                        if age > STALE_AFTER {
                            stopped.push(format!("rank {r} (no heartbeat for {:.1} s)", age.as_secs_f64()));
                        }
                    }
                }
            }
        }
        if stopped.is_empty() {
            (format!("every other rank still answers (timeout {} s)", self.timeout.as_secs()), false)
        } else {
            (format!("{} stopped", stopped.join(", ")), true)
        }
    }
}

/// The leaves where `a` and `b` differ: (dotted path, value in a, value in b).
pub fn differences(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Vec<(String, String, String)> {
    use serde_json::Value;
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            let null = Value::Null;
            keys.into_iter().flat_map(|k| differences(x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), &join(k))).collect()
        }
        _ if a == b => Vec::new(),
        _ => vec![(if path.is_empty() { "(whole value)".into() } else { path.to_string() }, a.to_string(), b.to_string())],
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly on purpose
mod tests {
    use super::differences;
    use serde_json::json;

    #[test]
    fn differences_name_the_keys() {
        let a = json!({"cfg": {"train": {"optim": {"lr": 0.001}, "seed": 1}}, "code": "x"});
        let b = json!({"cfg": {"train": {"optim": {"lr": 0.002}, "seed": 1}}, "code": "y"});
        let d = differences(&a, &b, "");
        assert_eq!(
            d,
            vec![
                ("cfg.train.optim.lr".to_string(), "0.001".to_string(), "0.002".to_string()),
                ("code".to_string(), "\"x\"".to_string(), "\"y\"".to_string()),
            ]
        );
        assert!(differences(&a, &a, "").is_empty());
    }
}
