//! Interface names to indexes in the calling thread's network namespace.

use std::ffi::CString;

/// The index of interface `name`, or None when there is none by that name.
pub fn index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated name; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}
