//! Netlink (rtnetlink) operations on links, addresses, routes and neighbours in
//! the namespace the connection was opened in.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use futures::TryStreamExt;
use lumen_api::Ipv4Cidr;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

/// Why a netlink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket failed")]
    Connect(#[source] std::io::Error),
    #[error("{op} failed")]
    Request {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("link {name} does not exist")]
    NoLink { name: String },
}

impl NetlinkError {
    /// The kernel's errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.code.map(|c| -c.get()),
            _ => None,
        }
    }
}

/// A request on a link: `true` if done, `false` if the link is not there
/// (`ENODEV`), else the failure of `op`.
fn found(
    result: Result<(), rtnetlink::Error>,
    op: impl FnOnce() -> String,
) -> Result<bool, NetlinkError> {
    match result {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
        {
            Ok(false)
        }
        Err(source) => Err(NetlinkError::Request { op: op(), source }),
    }
}

/// What we need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub up: bool,
}

/// A netlink connection bound to the namespace it was opened in.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

fn request(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError::Request { op, source }
}

impl Netlink {
    /// Open a connection in the calling thread's namespace; its driver runs on the
    /// current tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(to_link(&msg))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(source) => Err(NetlinkError::Request {
                op: format!("get link {name}"),
                source,
            }),
        }
    }

    /// The names of every link in the namespace.
    pub async fn link_names(&self) -> Result<Vec<String>, NetlinkError> {
        let mut links = self.handle.link().get().execute();
        let mut names = Vec::new();
        loop {
            match links.try_next().await {
                Ok(Some(msg)) => names.extend(msg.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                })),
                Ok(None) => return Ok(names),
                Err(source) => {
                    return Err(NetlinkError::Request {
                        op: "list links".to_owned(),
                        source,
                    });
                }
            }
        }
    }

    pub async fn require_link(&self, name: &str) -> Result<Link, NetlinkError> {
        self.link(name).await?.ok_or_else(|| NetlinkError::NoLink {
            name: name.to_owned(),
        })
    }

    /// Delete a link by name; `false` if it did not exist.
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        let result = self.handle.link().del(link.index).execute().await;
        found(result, || format!("delete link {name}"))
    }

    /// A VXLAN device in external (collect_md) mode: the datapath sets the tunnel
    /// key per packet.
    pub async fn create_vxlan(
        &self,
        name: &str,
        port: u16,
        mtu: u32,
    ) -> Result<Link, NetlinkError> {
        let msg = LinkVxlan::new(name, 0)
            .port(port)
            .collect_metadata(true)
            .learning(false)
            .mtu(mtu)
            .up()
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(request(format!("create vxlan {name}")))?;
        self.require_link(name).await
    }

    /// A veth pair whose peer is created directly inside the namespace `peer_ns`
    /// under its final name, so a clash there fails the request and leaves nothing.
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_ns: RawFd,
        mtu: u32,
    ) -> Result<Link, NetlinkError> {
        // One queue each way on both ends, said explicitly: left to the kernel,
        // a veth starts with a queue per CPU and is cut down to its peer's
        // count, and cutting queues waits out an RCU grace period under the
        // RTNL lock, which every other ADD then waits for too.
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .mtu(mtu)
            .append_extra_attribute(LinkAttribute::NumTxQueues(1))
            .append_extra_attribute(LinkAttribute::NumRxQueues(1))
            .setns_by_fd(peer_ns)
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_owned())
            .mtu(mtu)
            .append_extra_attribute(LinkAttribute::NumTxQueues(1))
            .append_extra_attribute(LinkAttribute::NumRxQueues(1))
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(request(format!("create veth {host}/{peer}")))?;
        self.require_link(host).await
    }

    /// Put the link `name` in link group `group`; `false` if there is no such link.
    pub async fn set_group(&self, name: &str, group: u32) -> Result<bool, NetlinkError> {
        let result = self
            .handle
            .link()
            .set(LinkUnspec::new_with_name(name).link_group(group).build())
            .execute()
            .await;
        found(result, || format!("set link {name} group {group}"))
    }

    /// Delete every link of link group `group` in one request (`ip link
    /// delete group`): the kernel tears them down together.
    pub async fn delete_group(&self, group: u32) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::Group(group));
        self.handle
            .link()
            .del_with_message(message)
            .execute()
            .await
            .map_err(request(format!("delete link group {group}")))
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(request(format!("set link {index} up")))
    }

    pub async fn add_address(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .replace()
            .execute()
            .await
            .map_err(request(format!("add address {ip}/{prefix}")))
    }

    /// The first IPv4 address on a link.
    pub async fn first_ipv4(&self, index: u32) -> Result<Option<Ipv4Addr>, NetlinkError> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addrs.try_next().await.map_err(request("list addresses"))? {
            for attr in msg.attributes {
                if let rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) =
                    attr
                {
                    return Ok(Some(ip));
                }
            }
        }
        Ok(None)
    }

    /// `ip route replace DST dev INDEX scope link`.
    pub async fn route_dev(&self, dst: Ipv4Cidr, index: u32) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), dst.prefix())
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        self.replace_route(msg, format!("add route {dst}")).await
    }

    /// `ip route replace DST via GW dev INDEX onlink`.
    pub async fn route_via(
        &self,
        dst: Ipv4Cidr,
        gw: Ipv4Addr,
        index: u32,
    ) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), dst.prefix())
            .gateway(gw)
            .output_interface(index)
            .onlink()
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(request(format!("add route {dst} via {gw}")))
    }

    /// `ip route replace unreachable DST`: addresses nothing more specific
    /// claims are refused here instead of leaving by the default route.
    pub async fn route_unreachable(&self, dst: Ipv4Cidr) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), dst.prefix())
            .kind(RouteType::Unreachable)
            .build();
        self.replace_route(msg, format!("add unreachable route {dst}"))
            .await
    }

    /// `ip route replace` of a built route message.
    async fn replace_route(
        &self,
        msg: rtnetlink::packet_route::route::RouteMessage,
        op: String,
    ) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(request(op))
    }

    /// Remove a route to `dst`; a missing route is not an error.
    pub async fn delete_route(&self, dst: Ipv4Cidr, index: u32) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), dst.prefix())
            .output_interface(index)
            .build();
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| -c.get()) == Some(libc::ESRCH) =>
            {
                Ok(())
            }
            Err(source) => Err(NetlinkError::Request {
                op: format!("delete route {dst}"),
                source,
            }),
        }
    }

    /// `ip neigh replace IP lladdr MAC dev INDEX nud permanent`.
    pub async fn neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(request(format!("add neighbour {ip}")))
    }
}

fn to_link(msg: &LinkMessage) -> Link {
    let mut mac = [0u8; 6];
    let mut mtu = 0;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Address(bytes) if bytes.len() == 6 => mac.copy_from_slice(bytes),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    Link {
        index: msg.header.index,
        mac,
        mtu,
        up: msg.header.flags.contains(LinkFlags::Up),
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
