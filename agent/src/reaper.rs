//! Deletes pod veths in batches. Deleting a link makes the kernel wait out an
//! RCU grace period (about 20 ms here), under the RTNL lock, so DELs that each
//! delete their own veth queue behind each other. Every veth whose DEL arrives
//! while a batch is being deleted joins the next batch instead: its links are
//! put in one link group, and one request deletes the whole group with one
//! teardown (`ip link delete group`). 20 veths go in about 30 ms instead of
//! 20 x 22 ms.
//!
//! The reaper has a thread and a netlink socket of its own, so a deletion that
//! blocks in the kernel never holds up the agent's other netlink requests.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::netlink::{Netlink, NetlinkError};

/// The link group of veths about to be deleted. Only the reaper uses it, and
/// only in the node's namespace, where every link is the agent's own.
pub const DELETE_GROUP: u32 = 0x4c4d_4e44;

/// Why a veth could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("putting {name} in the deletion group failed")]
    Group {
        name: String,
        #[source]
        source: NetlinkError,
    },
    #[error("deleting a batch of veths failed")]
    Delete(#[source] Arc<NetlinkError>),
    #[error("the link reaper is gone")]
    Gone,
}

type Request = (String, oneshot::Sender<Result<(), ReaperError>>);

/// The handle DELs send their veths to.
#[derive(Debug, Clone)]
pub struct LinkReaper {
    tx: mpsc::UnboundedSender<Request>,
}

impl LinkReaper {
    /// Start the reaper's thread in the calling thread's network namespace.
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("link-reaper".into())
            .spawn(move || runtime.block_on(reap(rx)))?;
        Ok(Self { tx })
    }

    /// Delete the link `name` (a veth: its peer goes too); a link that is not
    /// there is already deleted. Returns once it is gone.
    pub async fn delete(&self, name: &str) -> Result<(), ReaperError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((name.to_owned(), tx))
            .map_err(|_| ReaperError::Gone)?;
        rx.await.map_err(|_| ReaperError::Gone)?
    }
}

/// The reaper's loop: take every request queued, group their links, delete
/// the group, answer them all.
async fn reap(mut rx: mpsc::UnboundedReceiver<Request>) {
    let netlink = match Netlink::connect() {
        Ok(netlink) => netlink,
        Err(error) => {
            tracing::error!(%error, "link reaper: no netlink socket");
            return;
        }
    };
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, usize::MAX).await > 0 {
        let mut answers = Vec::with_capacity(batch.len());
        let mut grouped = 0usize;
        for (name, reply) in batch.drain(..) {
            let result = match netlink.set_group(&name, DELETE_GROUP).await {
                Ok(found) => {
                    grouped += usize::from(found);
                    Ok(())
                }
                Err(source) => Err(ReaperError::Group { name, source }),
            };
            answers.push((reply, result));
        }
        let deleted = match grouped {
            0 => Ok(()),
            _ => netlink.delete_group(DELETE_GROUP).await.map_err(Arc::new),
        };
        tracing::debug!(links = grouped, "veths deleted in one batch");
        for (reply, result) in answers {
            let result = result.and_then(|()| deleted.clone().map_err(ReaperError::Delete));
            let _ = reply.send(result);
        }
    }
}
