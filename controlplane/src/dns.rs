//! The cluster's authoritative DNS server (hickory-server, UDP and TCP): `{backend}.{cluster}`
//! resolves to the address its drone advertises, from scheduling until the backend terminates;
//! `_acme-challenge.{cluster}` holds the DNS-01 values of the certificate order in progress
//! (`TXT`); the zone's apex has its `SOA` and `NS`. Answers come from the controller's view of the cluster
//! (kept current by a KV watch), so every controller answers the same and a lookup costs no
//! store access.
//!
//! Response codes as an authoritative server gives them: NXDOMAIN for a name that does not
//! exist, NODATA (no error, no answer, the `SOA` in the authority section) for an existing name
//! without the asked type, REFUSED for names outside the zone, FORMERR for requests that are not
//! one query. Over UDP an answer is cut to what the client takes (the EDNS size it gave, at most
//! 1232 bytes; 512 without EDNS) and marked truncated (TC), so that it asks again over TCP.
//! Malformed packets never reach this handler: the server drops them or answers FORMERR, and
//! goes on. TCP is hickory-server's; UDP is served in batches of datagrams (see `udp`).

mod udp;

use crate::Controller;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Edns, Header, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use plane_protocol::ids::BackendId;
use plane_protocol::keys::{is_label, KEY_HOST_PREFIX};
use plane_protocol::records::DroneState;
use std::net::IpAddr;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, warn};

/// TTL of a backend's address: short, since backends come and go.
pub const BACKEND_TTL: u32 = 10;
/// TTL of the DNS-01 values: they change with every order.
pub const CHALLENGE_TTL: u32 = 1;
/// The label DNS-01 values are published under, below the apex.
const CHALLENGE_LABEL: &[u8] = b"_acme-challenge";
/// TTL of the apex records and of negative answers (the SOA minimum).
const ZONE_TTL: u32 = 60;
/// How long a TCP client may take to send its query.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest UDP answer offered to EDNS clients (the DNS flag day's safe size).
const MAX_UDP_PAYLOAD: u16 = 1232;

/// The zone's names.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    /// The cluster's domain, the zone's apex.
    pub zone: Name,
    /// The zone's name server (`NS`, and the `SOA`'s primary).
    pub ns: Name,
    /// The zone's contact, as an `SOA` mailbox (`hostmaster.example.com.`).
    pub soa_mailbox: Name,
}

/// Why the zone's names are not usable.
#[derive(Debug, thiserror::Error)]
#[error("{what} {name:?} is not a domain name")]
pub struct BadName {
    what: &'static str,
    name: String,
}

impl ZoneConfig {
    /// The zone of `cluster`, its name server `ns` (default `ns.{cluster}`) and its contact
    /// `email` (`hostmaster@{cluster}` by default; `@` becomes the mailbox's first dot).
    pub fn new(cluster: &str, ns: Option<&str>, email: Option<&str>) -> Result<Self, BadName> {
        let fqdn = |what: &'static str, text: &str| {
            let mut name = Name::from_ascii(text).map_err(|_| BadName {
                what,
                name: text.to_string(),
            })?;
            name.set_fqdn(true);
            Ok::<_, BadName>(name.to_lowercase())
        };
        let zone = fqdn("the cluster", cluster)?;
        let ns = match ns {
            Some(ns) => fqdn("--dns-ns", ns)?,
            None => fqdn("--dns-ns", &format!("ns.{cluster}"))?,
        };
        let mailbox = match email {
            Some(email) => {
                let (user, domain) = email.split_once('@').ok_or_else(|| BadName {
                    what: "--dns-soa-email",
                    name: email.to_string(),
                })?;
                fqdn(
                    "--dns-soa-email",
                    &format!("{}.{domain}", user.replace('.', "\\.")),
                )?
            }
            None => fqdn("--dns-soa-email", &format!("hostmaster.{cluster}"))?,
        };
        Ok(ZoneConfig {
            zone,
            ns,
            soa_mailbox: mailbox,
        })
    }
}

/// Serves the zone on `udp` and `tcp` until `shutdown` resolves.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    controller: Controller,
    zone: ZoneConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let zone = Zone { controller, zone };
    let mut server = ServerFuture::new(zone.clone());
    server.register_listener(tcp, TCP_TIMEOUT);
    tokio::select! {
        result = server.block_until_done() => result.map_err(std::io::Error::other),
        result = udp::serve(udp, zone) => result,
        () = shutdown => {
            if let Err(error) = server.shutdown_gracefully().await {
                debug!(%error, "DNS server shutdown");
            }
            Ok(())
        }
    }
}

/// The handler: answers from the controller's view.
#[derive(Clone)]
struct Zone {
    controller: Controller,
    zone: ZoneConfig,
}

/// What a name holds, as far as this zone knows.
enum Lookup {
    /// Outside the zone.
    Refused,
    /// No such name.
    NxDomain,
    /// The name exists; these records of the asked type (none: NODATA).
    Found(Vec<Record>),
}

impl Zone {
    fn soa(&self) -> Record {
        // The serial only has to grow when the zone changes for secondaries, and this zone has
        // none: the time, in seconds, grows.
        let serial = (plane_protocol::messages::now_millis() / 1000) as u32;
        let soa = SOA::new(
            self.zone.ns.clone(),
            self.zone.soa_mailbox.clone(),
            serial,
            3600,
            600,
            86400,
            ZONE_TTL,
        );
        Record::from_rdata(self.zone.zone.clone(), ZONE_TTL, RData::SOA(soa))
    }

    fn lookup(&self, name: &Name, kind: RecordType) -> Lookup {
        let name = name.to_lowercase();
        if !self.zone.zone.zone_of(&name) {
            return Lookup::Refused;
        }
        let depth = name.num_labels();
        let apex = self.zone.zone.num_labels();
        if depth == apex {
            return Lookup::Found(match kind {
                RecordType::SOA => vec![self.soa()],
                RecordType::NS => vec![Record::from_rdata(
                    name,
                    ZONE_TTL,
                    RData::NS(NS(self.zone.ns.clone())),
                )],
                _ => Vec::new(),
            });
        }
        if depth != apex + 1 {
            return Lookup::NxDomain;
        }
        let Some(label) = name.iter().next() else {
            return Lookup::NxDomain;
        };
        // The name is lowercased above.
        if label == CHALLENGE_LABEL {
            return self.challenges(name, kind);
        }
        let Ok(label) = std::str::from_utf8(label) else {
            return Lookup::NxDomain;
        };
        let addresses = match label.strip_prefix(KEY_HOST_PREFIX).filter(|l| is_label(l)) {
            Some(key) => self.addresses_of_key(key),
            None => BackendId::new(label)
                .ok()
                .and_then(|id| self.address_of(&id))
                .into_iter()
                .collect(),
        };
        if addresses.is_empty() {
            return Lookup::NxDomain;
        }
        Lookup::Found(
            addresses
                .into_iter()
                .filter_map(|ip| match (kind, ip) {
                    (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(A(v4))),
                    (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(v6))),
                    _ => None,
                })
                .map(|rdata| Record::from_rdata(name.clone(), BACKEND_TTL, rdata))
                .collect(),
        )
    }

    /// A key's name: the drone running its backend, or, while it sleeps, every live drone
    /// that takes backends (any of them can wake it). Whether the key exists is the proxy's
    /// to say: this answer is the same for every well-formed key name.
    fn addresses_of_key(&self, label: &str) -> Vec<IpAddr> {
        if let Some(backend) = self.controller.view().backend_of_key(label) {
            return self.address_of(&backend.record.id).into_iter().collect();
        }
        let mut addresses: Vec<IpAddr> = self
            .controller
            .drones()
            .iter()
            .filter(|drone| drone.state() == DroneState::Live)
            .filter_map(|drone| drone.record.ip)
            .collect();
        addresses.sort();
        addresses.dedup();
        addresses
    }

    /// The TXT records of the order in progress; no order, no name.
    fn challenges(&self, name: Name, kind: RecordType) -> Lookup {
        let lock = self.controller.view().order_lock();
        let now = plane_protocol::messages::now_millis();
        let values = lock
            .as_ref()
            .map_or(&[][..], |lock| lock.record.live_challenges(now));
        if values.is_empty() {
            return Lookup::NxDomain;
        }
        if kind != RecordType::TXT {
            return Lookup::Found(Vec::new());
        }
        Lookup::Found(
            values
                .iter()
                .map(|value| {
                    Record::from_rdata(
                        name.clone(),
                        CHALLENGE_TTL,
                        RData::TXT(TXT::new(vec![value.clone()])),
                    )
                })
                .collect(),
        )
    }

    /// The address a live backend's name resolves to: its drone's advertised one.
    fn address_of(&self, id: &BackendId) -> Option<IpAddr> {
        let view = self.controller.view();
        let backend = view.backend(id)?;
        if backend.record.is_terminated() {
            return None;
        }
        view.drone(&backend.record.drone)?.record.ip
    }
}

#[async_trait::async_trait]
impl RequestHandler for Zone {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        let edns = request.edns().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns.set_version(0);
            edns
        });
        let answered = if request.message_type() != MessageType::Query
            || request.op_code() != OpCode::Query
        {
            let code = if request.message_type() == MessageType::Query {
                ResponseCode::NotImp
            } else {
                ResponseCode::FormErr
            };
            response_handle
                .send_response(builder.error_msg(request.header(), code))
                .await
        } else {
            match request.request_info() {
                // Not exactly one question.
                Err(_) => {
                    response_handle
                        .send_response(builder.error_msg(request.header(), ResponseCode::FormErr))
                        .await
                }
                Ok(info) => {
                    let name = Name::from(info.query.name());
                    let kind = info.query.query_type();
                    // The SOA goes with negative answers only: built only for them.
                    let (answers, authority): (Vec<Record>, Vec<Record>) =
                        match self.lookup(&name, kind) {
                            Lookup::Refused => {
                                header.set_response_code(ResponseCode::Refused);
                                (Vec::new(), Vec::new())
                            }
                            Lookup::NxDomain => {
                                header.set_authoritative(true);
                                header.set_response_code(ResponseCode::NXDomain);
                                (Vec::new(), vec![self.soa()])
                            }
                            Lookup::Found(records) if records.is_empty() => {
                                header.set_authoritative(true);
                                (Vec::new(), vec![self.soa()])
                            }
                            Lookup::Found(records) => {
                                header.set_authoritative(true);
                                (records, Vec::new())
                            }
                        };
                    let mut response = builder.build(
                        header,
                        answers.iter(),
                        [].iter(),
                        authority.iter(),
                        [].iter(),
                    );
                    if let Some(edns) = edns {
                        response.set_edns(edns);
                    }
                    response_handle.send_response(response).await
                }
            }
        };
        match answered {
            Ok(info) => info,
            Err(error) => {
                warn!(%error, "DNS answer not sent");
                let mut failed = Header::new();
                failed.set_response_code(ResponseCode::ServFail);
                failed.into()
            }
        }
    }
}
