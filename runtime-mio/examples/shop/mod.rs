//! What the session examples share: a small in-memory product table (the "database" logical
//! references point into), the reconstruction hook that reads it, and a loopback cluster.
#![allow(dead_code)]

use hybridcast_mio::core::session::{LogicalRef, Reconstructor};
use hybridcast_mio::core::{Config, Event, SessionId};
use hybridcast_mio::{NodeHandle, RuntimeConfig, spawn};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// One row of the product table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub price_cents: u32,
}

/// The product table: 60 rows, 40 of them routers.
pub fn catalog() -> Vec<Product> {
    (0..60)
        .map(|i| {
            let kind = if i % 3 == 2 { "switch" } else { "router" };
            Product {
                id: format!("p-{i:03}"),
                name: format!("{kind} model {i}"),
                price_cents: 1_000 + 250 * i,
            }
        })
        .collect()
}

/// Runs a query against the table: the rows whose name contains `query`, in id order.
pub fn search<'a>(table: &'a [Product], query: &str) -> Vec<&'a Product> {
    table.iter().filter(|p| p.name.contains(query)).collect()
}

/// One page of a query's results (pages count from 1).
pub fn page<'a>(table: &'a [Product], query: &str, size: u32, number: u32) -> Vec<&'a Product> {
    let start = (number.saturating_sub(1) * size) as usize;
    search(table, query)
        .into_iter()
        .skip(start)
        .take(size as usize)
        .collect()
}

/// What a session entry becomes again after a failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebuilt {
    /// A page of search results, fetched again by re-running the query.
    Page {
        query: String,
        number: u32,
        rows: Vec<Product>,
    },
    /// A product row, read again by its key.
    Product(Product),
    /// A raw value (a quantity the user typed).
    Quantity(u32),
}

/// The reconstruction hook: logical references are resolved against the product table.
pub struct FromTable<'a> {
    pub table: &'a [Product],
    /// Rows read from the table while rebuilding (what replication did not have to carry).
    pub rows_read: usize,
}

impl Reconstructor for FromTable<'_> {
    type Object = Rebuilt;
    type Error = String;

    fn rebuild_reference(
        &mut self,
        _pool: &str,
        _key: &str,
        reference: &LogicalRef,
    ) -> Result<Rebuilt, String> {
        if let Some(p) = reference.as_page() {
            let rows: Vec<Product> = page(self.table, &p.query, p.page_size, p.page)
                .into_iter()
                .cloned()
                .collect();
            self.rows_read += search(self.table, &p.query).len();
            return Ok(Rebuilt::Page {
                query: p.query,
                number: p.page,
                rows,
            });
        }
        if reference.kind == "product" {
            let id = std::str::from_utf8(&reference.key).map_err(|e| e.to_string())?;
            self.rows_read += 1;
            return self
                .table
                .iter()
                .find(|p| p.id == id)
                .cloned()
                .map(Rebuilt::Product)
                .ok_or_else(|| format!("no product {id}"));
        }
        Err(format!("unknown reference kind {}", reference.kind))
    }

    fn rebuild_raw(&mut self, _pool: &str, _key: &str, bytes: &[u8]) -> Result<Rebuilt, String> {
        let raw: [u8; 4] = bytes.try_into().map_err(|_| "quantity is not 4 bytes")?;
        Ok(Rebuilt::Quantity(u32::from_be_bytes(raw)))
    }
}

/// Starts `n` members on loopback with a multicast port of their own; each on its own "host"
/// id so secondaries land elsewhere.
pub fn cluster(name: &str, n: usize, port: u16) -> Result<Vec<NodeHandle>, String> {
    let mut members = Vec::new();
    for i in 0..n {
        let mut c = RuntimeConfig::new(name, &format!("app-{i}"));
        c.group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 72, 91), port);
        c.host_id = Some(format!("host-{i}"));
        c.core = Config {
            heartbeat_interval: Duration::from_millis(200),
            request_timeout: Duration::from_millis(500),
            ..Config::default()
        };
        members.push(spawn(c).map_err(|e| format!("starting app-{i}: {e}"))?);
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let ready = members.iter().all(|m| {
            m.view().is_ok_and(|v| {
                v.joined && v.members.iter().filter(|m| m.state == "alive").count() == n - 1
            })
        });
        if ready {
            return Ok(members);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("the cluster did not form within 20 s".into())
}

/// Waits until `member`'s secondary acknowledged `version` of `id`.
pub fn wait_replicated(member: &NodeHandle, id: SessionId, version: u64) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        while let Ok(e) = member.events().try_recv() {
            if let Event::SessionReplicated {
                id: got,
                version: v,
            } = e
            {
                if got == id && v >= version {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!(
        "version {version} of {id} was not acknowledged within 20 s"
    ))
}

/// A multicast port for this run, so parallel runs do not mix.
pub fn port(base: u16) -> u16 {
    base + (std::process::id() % 500) as u16
}
