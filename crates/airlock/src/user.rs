//! The invoking user: who the agent runs as inside.

use std::ffi::CStr;
use std::path::PathBuf;

use airlock_core::spec::SandboxUser;

pub fn invoking_user() -> SandboxUser {
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut name = String::new();
    let mut home = PathBuf::new();
    let mut shell = PathBuf::from("/bin/sh");
    // SAFETY: getpwuid_r fills the passwd struct with pointers into `buf`, which outlives their use.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        if libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) == 0
            && !out.is_null()
        {
            name = CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned();
            home = PathBuf::from(CStr::from_ptr(pw.pw_dir).to_string_lossy().into_owned());
            let sh = CStr::from_ptr(pw.pw_shell).to_string_lossy().into_owned();
            if !sh.is_empty() && !sh.ends_with("nologin") && !sh.ends_with("/false") {
                shell = PathBuf::from(sh);
            }
        }
    }
    if let Some(h) = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|h| h.is_absolute())
    {
        home = h;
    }
    if name.is_empty() {
        name = std::env::var("USER").unwrap_or_else(|_| format!("user{uid}"));
    }
    if home.as_os_str().is_empty() || home == std::path::Path::new("/") {
        home = if uid == 0 {
            "/root".into()
        } else {
            format!("/home/{name}").into()
        };
    }
    SandboxUser {
        uid,
        gid,
        name,
        home,
        shell,
    }
}
