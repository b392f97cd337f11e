//! Sending a crafted frame out of a pod's own interface, so it enters the
//! datapath exactly as the pod's packets do (host veth ingress, `from_pod`).
//! One packet socket per pod, opened inside the pod's namespace on a thread of
//! its own and kept: a socket stays in the namespace it was made in.

use std::collections::HashMap;
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why a frame could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("entering the pod's namespace {path} failed")]
    Netns {
        path: PathBuf,
        #[source]
        source: crate::netns::NetnsError,
    },
    #[error("the pod has no interface {ifname}")]
    NoInterface { ifname: String },
    #[error("opening a packet socket in the pod failed")]
    Socket(#[source] std::io::Error),
    #[error("sending the trace packet failed")]
    Send(#[source] std::io::Error),
    #[error("the socket thread for the pod panicked")]
    Panicked,
}

/// A packet socket in one pod, bound to its interface.
#[derive(Debug)]
struct PodSocket {
    fd: OwnedFd,
    ifindex: i32,
}

/// The pods' sockets, by pod address.
#[derive(Debug, Default)]
pub struct Injector {
    sockets: Mutex<HashMap<Ipv4Addr, (PathBuf, std::sync::Arc<PodSocket>)>>,
}

impl Injector {
    /// Send `frame` out of `ifname` in the pod at `netns` (address `pod`). A
    /// cached socket of an earlier pod with the same address is replaced.
    pub fn send(
        &self,
        pod: Ipv4Addr,
        netns: &Path,
        ifname: &str,
        frame: &[u8],
    ) -> Result<(), InjectError> {
        let socket = self.socket(pod, netns, ifname)?;
        match send(&socket, frame) {
            Ok(()) => Ok(()),
            Err(_) => {
                // The pod may have been re-created: open afresh once.
                self.forget(pod);
                send(&*self.socket(pod, netns, ifname)?, frame).map_err(InjectError::Send)
            }
        }
    }

    fn forget(&self, pod: Ipv4Addr) {
        if let Ok(mut s) = self.sockets.lock() {
            s.remove(&pod);
        }
    }

    /// Close the sockets of pods no longer attached: an open socket would keep
    /// a deleted pod's namespace alive.
    pub fn retain(&self, attached: impl Fn(Ipv4Addr) -> bool) {
        if let Ok(mut s) = self.sockets.lock() {
            s.retain(|ip, _| attached(*ip));
        }
    }

    fn socket(
        &self,
        pod: Ipv4Addr,
        netns: &Path,
        ifname: &str,
    ) -> Result<std::sync::Arc<PodSocket>, InjectError> {
        if let Ok(s) = self.sockets.lock()
            && let Some((path, socket)) = s.get(&pod)
            && path == netns
        {
            return Ok(socket.clone());
        }
        let socket = std::sync::Arc::new(open_in(netns, ifname)?);
        if let Ok(mut s) = self.sockets.lock() {
            s.insert(pod, (netns.to_owned(), socket.clone()));
        }
        Ok(socket)
    }
}

/// Open the socket on a thread that enters the pod's namespace and then ends.
fn open_in(netns: &Path, ifname: &str) -> Result<PodSocket, InjectError> {
    let path = netns.to_owned();
    let ifname = ifname.to_owned();
    std::thread::spawn(move || {
        crate::netns::enter(&path).map_err(|source| InjectError::Netns {
            path: path.clone(),
            source,
        })?;
        let name = CString::new(ifname.clone()).map_err(|_| InjectError::NoInterface {
            ifname: ifname.clone(),
        })?;
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(InjectError::NoInterface { ifname });
        }
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(InjectError::Socket(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PodSocket {
            fd,
            ifindex: i32::try_from(ifindex).unwrap_or(0),
        })
    })
    .join()
    .map_err(|_| InjectError::Panicked)?
}

fn send(socket: &PodSocket, frame: &[u8]) -> std::io::Result<()> {
    // SAFETY: zeroed sockaddr_ll is a valid value; the fields are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
    addr.sll_ifindex = socket.ifindex;
    addr.sll_halen = 6;
    if let Some(dst) = frame.get(..6) {
        addr.sll_addr[..6].copy_from_slice(dst);
    }
    // SAFETY: `frame` and `addr` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            socket.fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::from_ref(&addr).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(20),
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
