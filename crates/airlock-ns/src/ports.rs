//! Published ports (`-p HOST_PORT:SANDBOX_PORT`): a dev server started inside is reachable from
//! the host. The supervisor listens on the host side; for each connection it asks the sandbox's
//! init, over a private channel, to connect to the port on the sandbox's own loopback (so servers
//! bound to 127.0.0.1 inside work, and no privilege is needed), receives that socket and relays
//! bytes both ways. Listeners live as long as the supervisor: mappings disappear with the sandbox.

use std::io::{IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use airlock_core::spec::PortMap;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use crate::error::{NsError, Result};

pub struct Publisher {
    _listeners: Vec<Arc<TcpListener>>,
}

impl Publisher {
    /// Bind every mapping now (a taken port is an error for the start), then serve them.
    pub fn start(channel: OwnedFd, maps: &[PortMap]) -> Result<Publisher> {
        let channel = Arc::new(Mutex::new(channel));
        let mut listeners = Vec::new();
        for m in maps {
            let addr = SocketAddr::new(m.host_ip, m.host_port);
            let l = TcpListener::bind(addr).map_err(|e| {
                NsError::Setup(format!(
                    "publishing {m}: cannot listen on {addr}: {e}{}",
                    if m.host_port < 1024 {
                        " (ports below 1024 need root; pick a higher host port)"
                    } else {
                        "; pick another host port"
                    }
                ))
            })?;
            let l = Arc::new(l);
            listeners.push(l.clone());
            let channel = channel.clone();
            let sandbox_port = m.sandbox_port;
            let _ = std::thread::Builder::new()
                .name(format!("airlock-port-{}", m.host_port))
                .spawn(move || {
                    for client in l.incoming().flatten() {
                        let inside = {
                            let ch = channel.lock().unwrap_or_else(|p| p.into_inner());
                            connect_inside(ch.as_raw_fd(), sandbox_port)
                        };
                        match inside {
                            Some(server) => relay(client, server),
                            None => drop(client),
                        }
                    }
                });
        }
        Ok(Publisher {
            _listeners: listeners,
        })
    }
}

/// Ask the init for a connection to `port` on the sandbox's loopback.
fn connect_inside(channel: RawFd, port: u16) -> Option<TcpStream> {
    let mut req = vec![b'c'];
    req.extend_from_slice(&port.to_be_bytes());
    crate::init::send(channel, &req);
    let mut buf = [0u8; 16];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        channel,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd in our table; we own it.
            return Some(TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    None
}

/// Copy both ways until both sides are done.
fn relay(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let pump = |mut from: TcpStream, mut to: TcpStream| {
        move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        }
    };
    let _ = std::thread::Builder::new()
        .name("airlock-port-relay".into())
        .spawn(pump(a, b2));
    let _ = std::thread::Builder::new()
        .name("airlock-port-relay".into())
        .spawn(pump(b, a2));
}
