//! The C ABI of `cpp/c10d_shim.cpp`. Every function returns null on success
//! or an owned error message (the C++ exception's text).

use std::ffi::{c_char, c_int, c_void, CStr};

extern "C" {
    pub fn forja_c10d_free_string(s: *mut c_char);
    pub fn forja_c10d_free_bytes(data: *mut u8);
    pub fn forja_c10d_store_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        prefix: *const c_char,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn forja_c10d_store_free(s: *mut c_void);
    pub fn forja_c10d_store_set(s: *mut c_void, key: *const c_char, data: *const u8, len: usize) -> *mut c_char;
    pub fn forja_c10d_store_get(s: *mut c_void, key: *const c_char, data: *mut *mut u8, len: *mut usize) -> *mut c_char;
    pub fn forja_c10d_store_check(s: *mut c_void, key: *const c_char, present: *mut c_int) -> *mut c_char;
    pub fn forja_c10d_gloo_new(
        s: *mut c_void,
        rank: c_int,
        world: c_int,
        bind_host: *const c_char,
        iface: *const c_char,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn forja_c10d_group_free(g: *mut c_void);
    pub fn forja_c10d_allreduce_sum(g: *mut c_void, t: *mut c_void) -> *mut c_char;
    pub fn forja_c10d_broadcast(g: *mut c_void, t: *mut c_void, root: c_int) -> *mut c_char;
    pub fn forja_c10d_barrier(g: *mut c_void) -> *mut c_char;
    pub fn forja_c10d_overlap_new(
        g: *mut c_void,
        params: *const *mut c_void,
        n: usize,
        bucket_numel: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn forja_c10d_overlap_free(o: *mut c_void);
    pub fn forja_c10d_overlap_arm(o: *mut c_void) -> *mut c_char;
    pub fn forja_c10d_overlap_finish(o: *mut c_void) -> *mut c_char;
}

/// Turns a shim result into `Err(message)`, freeing the message.
pub fn check(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string the shim allocated
    // with malloc; it is read once and freed by the shim's own free.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    // SAFETY: freed once, by the allocator that made it, after the copy above.
    unsafe { forja_c10d_free_string(err) };
    Err(msg)
}
