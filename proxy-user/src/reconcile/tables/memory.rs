//! The reconciler's tables in memory, for tests without root: they refuse what the kernel's
//! maps refuse (a full table, an injected failure, part way through a batch), and after every
//! single entry written or removed they check what a datapath reader relies on (slots under a
//! head exist and point at backends, metadata and the internal-scope entry are there, affinity
//! members name a frontend and a backend), so a wrong write order fails a test.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    fmt::Write as _,
    hash::Hash,
    io,
    net::SocketAddr,
    rc::Rc,
};

use anyhow::{Result, bail};
use proxy_common::{
    AffinityMatchKey, Backend, Backend6, BackendOf, SVC_F_TWO_SCOPES, SVC_SCOPE_DEFAULT,
    SVC_SCOPE_INTERNAL, ServiceKey, ServiceKey6, ServiceKeyOf, ServiceMeta, ServiceValue,
    SkippedKey, SkippedService, net::port_from_net,
};

use super::{BatchError, Counters, MapAddr, RangeKey, RangeKey6, ServiceTables, Table};

/// What the tables hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[expect(
    clippy::zero_sized_map_values,
    reason = "like the kernel maps they stand in for, the key-only tables are `Table<K, ()>`"
)]
pub struct Contents {
    pub services: HashMap<ServiceKey, ServiceValue>,
    pub backends: HashMap<u32, Backend>,
    pub service_meta: HashMap<u32, ServiceMeta>,
    pub source_ranges: HashMap<RangeKey, ()>,
    pub affinity_match: HashMap<AffinityMatchKey, ()>,
    pub skipped: HashMap<SkippedKey, SkippedService>,
    pub services6: HashMap<ServiceKey6, ServiceValue>,
    pub backends6: HashMap<u32, Backend6>,
    pub source_ranges6: HashMap<RangeKey6, ()>,
    /// Traffic per service id: a test may set some to see which an apply starts from zero.
    pub service_counters: Vec<u64>,
    pub backend_counters: Vec<u64>,
}

/// How many entries each table takes, like the maps' `max_entries`; an IPv6 table takes as many
/// as its IPv4 counterpart (one flag sizes both maps).
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub services: usize,
    pub backends: usize,
    pub service_meta: usize,
    pub source_ranges: usize,
    pub affinity_match: usize,
    pub skipped: usize,
    /// The counter arrays' lengths, which bound the ids.
    pub service_ids: u32,
    pub backend_ids: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            services: 4096,
            backends: 1024,
            service_meta: 1024,
            source_ranges: 1024,
            affinity_match: 4096,
            skipped: 256,
            service_ids: 1024,
            backend_ids: 1024,
        }
    }
}

/// The tables, their rules, and what broke them.
#[derive(Debug)]
struct Shared {
    contents: Contents,
    capacity: Capacity,
    /// Check the reader's view after every entry (off to start from a deliberately broken state).
    checking: bool,
    /// The first reader-visible inconsistency seen, with the write that made it.
    violation: Option<String>,
    /// Entries written or removed so far.
    ops: u64,
    /// The op with this number fails (with EIO), as a map write can for reasons of its own.
    fail_at: Option<u64>,
}

impl Shared {
    /// Counts one op; fails it if it is the injected failure.
    fn op(&mut self) -> io::Result<()> {
        self.ops += 1;
        if self.fail_at == Some(self.ops) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    fn check(&mut self, what: impl FnOnce() -> String) {
        if self.checking
            && self.violation.is_none()
            && let Err(err) = reader_view(&self.contents)
        {
            self.violation = Some(format!("after {}: {err}", what()));
        }
    }
}

/// The in-memory tables; clones share them.
#[derive(Clone, Debug)]
pub struct MemoryTables {
    shared: Rc<RefCell<Shared>>,
    services: Handle<ServiceKey, ServiceValue>,
    backends: Handle<u32, Backend>,
    service_meta: Handle<u32, ServiceMeta>,
    source_ranges: Handle<RangeKey, ()>,
    affinity_match: Handle<AffinityMatchKey, ()>,
    skipped: Handle<SkippedKey, SkippedService>,
    services6: Handle<ServiceKey6, ServiceValue>,
    backends6: Handle<u32, Backend6>,
    source_ranges6: Handle<RangeKey6, ()>,
    service_counters: CounterHandle,
    backend_counters: CounterHandle,
}

impl MemoryTables {
    /// Empty tables that check every write.
    pub fn new(capacity: Capacity) -> Self {
        Self::holding(Contents::default(), capacity)
    }

    /// Tables holding `contents`, as maps left by an earlier run do. Call
    /// [`Self::stop_checking`] first to start from a view an interrupted run left broken.
    pub fn holding(mut contents: Contents, capacity: Capacity) -> Self {
        contents
            .service_counters
            .resize(capacity.service_ids as usize, 0);
        contents
            .backend_counters
            .resize(capacity.backend_ids as usize, 0);
        let shared = Rc::new(RefCell::new(Shared {
            contents,
            capacity,
            checking: true,
            violation: None,
            ops: 0,
            fail_at: None,
        }));
        Self {
            services: Handle::new(&shared, "services", |c| &mut c.services, |c| c.services),
            backends: Handle::new(&shared, "backends", |c| &mut c.backends, |c| c.backends),
            service_meta: Handle::new(
                &shared,
                "service meta",
                |c| &mut c.service_meta,
                |c| c.service_meta,
            ),
            source_ranges: Handle::new(
                &shared,
                "source ranges",
                |c| &mut c.source_ranges,
                |c| c.source_ranges,
            ),
            affinity_match: Handle::new(
                &shared,
                "affinity match",
                |c| &mut c.affinity_match,
                |c| c.affinity_match,
            ),
            skipped: Handle::new(&shared, "skipped", |c| &mut c.skipped, |c| c.skipped),
            services6: Handle::new(&shared, "services6", |c| &mut c.services6, |c| c.services),
            backends6: Handle::new(&shared, "backends6", |c| &mut c.backends6, |c| c.backends),
            source_ranges6: Handle::new(
                &shared,
                "source ranges6",
                |c| &mut c.source_ranges6,
                |c| c.source_ranges,
            ),
            service_counters: CounterHandle {
                shared: shared.clone(),
                counters: |c| &mut c.service_counters,
            },
            backend_counters: CounterHandle {
                shared: shared.clone(),
                counters: |c| &mut c.backend_counters,
            },
            shared,
        }
    }

    /// Checks the reader's view after every write from now on (a broken view now is reported).
    pub fn check_from_now(&mut self) {
        let mut shared = self.shared.borrow_mut();
        shared.checking = true;
        shared.check(|| "the start".to_owned());
    }

    /// Stops checking (to break the view on purpose, as a crash part way through would).
    pub fn stop_checking(&mut self) {
        self.shared.borrow_mut().checking = false;
    }

    /// What the tables hold now.
    pub fn contents(&self) -> Contents {
        self.shared.borrow().contents.clone()
    }

    /// Sets the traffic of every counter slot, as if packets had passed.
    pub fn set_traffic(&mut self, packets: u64) {
        let mut shared = self.shared.borrow_mut();
        shared.contents.service_counters.fill(packets);
        shared.contents.backend_counters.fill(packets);
    }

    /// Makes the `n`th op from now (1 = the next) fail, as a kernel map write can.
    pub fn fail_op(&mut self, n: u64) {
        let mut shared = self.shared.borrow_mut();
        shared.fail_at = Some(shared.ops + n);
    }

    /// Undoes [`Self::fail_op`] if that op has not come.
    pub fn clear_failure(&mut self) {
        self.shared.borrow_mut().fail_at = None;
    }

    /// Entries written or removed so far.
    pub fn ops(&self) -> u64 {
        self.shared.borrow().ops
    }

    /// Fails with the first inconsistency a datapath reader could have seen.
    pub fn reader_violation(&self) -> Result<()> {
        match &self.shared.borrow().violation {
            Some(violation) => bail!("{violation}"),
            None => Ok(()),
        }
    }
}

impl ServiceTables for MemoryTables {
    fn services(&mut self) -> &mut dyn Table<ServiceKey, ServiceValue> {
        &mut self.services
    }
    fn services6(&mut self) -> &mut dyn Table<ServiceKey6, ServiceValue> {
        &mut self.services6
    }
    fn backends(&mut self) -> &mut dyn Table<u32, Backend> {
        &mut self.backends
    }
    fn backends6(&mut self) -> &mut dyn Table<u32, Backend6> {
        &mut self.backends6
    }
    fn service_meta(&mut self) -> &mut dyn Table<u32, ServiceMeta> {
        &mut self.service_meta
    }
    fn source_ranges(&mut self) -> &mut dyn Table<RangeKey, ()> {
        &mut self.source_ranges
    }
    fn source_ranges6(&mut self) -> &mut dyn Table<RangeKey6, ()> {
        &mut self.source_ranges6
    }
    fn affinity_match(&mut self) -> &mut dyn Table<AffinityMatchKey, ()> {
        &mut self.affinity_match
    }
    fn skipped(&mut self) -> &mut dyn Table<SkippedKey, SkippedService> {
        &mut self.skipped
    }
    fn service_counters(&mut self) -> &mut dyn Counters {
        &mut self.service_counters
    }
    fn backend_counters(&mut self) -> &mut dyn Counters {
        &mut self.backend_counters
    }
    fn services_capacity(&mut self) -> Result<[usize; 2]> {
        let services = self.shared.borrow().capacity.services;
        Ok([services; 2])
    }
}

/// One table of the shared contents.
struct Handle<K, V> {
    shared: Rc<RefCell<Shared>>,
    name: &'static str,
    table: fn(&mut Contents) -> &mut HashMap<K, V>,
    limit: fn(&Capacity) -> usize,
}

impl<K, V> Handle<K, V> {
    fn new(
        shared: &Rc<RefCell<Shared>>,
        name: &'static str,
        table: fn(&mut Contents) -> &mut HashMap<K, V>,
        limit: fn(&Capacity) -> usize,
    ) -> Self {
        Self {
            shared: shared.clone(),
            name,
            table,
            limit,
        }
    }
}

impl<K, V> Clone for Handle<K, V> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            ..*self
        }
    }
}

impl<K, V> std::fmt::Debug for Handle<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Handle({})", self.name)
    }
}

impl<K: Copy + Eq + Hash + std::fmt::Debug, V: Copy> Table<K, V> for Handle<K, V> {
    fn entries(&self) -> Result<Vec<(K, V)>> {
        let mut shared = self.shared.borrow_mut();
        Ok((self.table)(&mut shared.contents)
            .iter()
            .map(|(key, value)| (*key, *value))
            .collect())
    }

    fn write(&mut self, keys: &[K], values: &[V]) -> Result<(), BatchError> {
        let mut shared = self.shared.borrow_mut();
        for (index, (key, value)) in keys.iter().zip(values).enumerate() {
            let limit = (self.limit)(&shared.capacity);
            shared.op().map_err(|error| BatchError { index, error })?;
            let table = (self.table)(&mut shared.contents);
            if table.len() >= limit && !table.contains_key(key) {
                let error = io::Error::from_raw_os_error(libc::E2BIG);
                return Err(BatchError { index, error });
            }
            table.insert(*key, *value);
            shared.check(|| format!("writing {key:?} to {}", self.name));
        }
        Ok(())
    }

    fn remove(&mut self, key: &K) -> Result<()> {
        let mut shared = self.shared.borrow_mut();
        shared.op()?;
        (self.table)(&mut shared.contents).remove(key);
        shared.check(|| format!("removing {key:?} from {}", self.name));
        Ok(())
    }
}

/// One counter array of the shared contents.
#[derive(Clone)]
struct CounterHandle {
    shared: Rc<RefCell<Shared>>,
    counters: fn(&mut Contents) -> &mut Vec<u64>,
}

impl std::fmt::Debug for CounterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CounterHandle")
    }
}

impl Counters for CounterHandle {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the counter arrays are made `Capacity::service_ids` or `backend_ids` (u32) long"
    )]
    fn slots(&self) -> u32 {
        let mut shared = self.shared.borrow_mut();
        (self.counters)(&mut shared.contents).len() as u32
    }

    fn reset(&mut self, ids: &[u32]) -> Result<(), BatchError> {
        let mut shared = self.shared.borrow_mut();
        for (index, &id) in ids.iter().enumerate() {
            shared.op().map_err(|error| BatchError { index, error })?;
            let Some(slot) = (self.counters)(&mut shared.contents).get_mut(id as usize) else {
                let error = io::Error::from_raw_os_error(libc::E2BIG);
                return Err(BatchError { index, error });
            };
            *slot = 0;
        }
        Ok(())
    }
}

/// Checks what a datapath reader relies on, in each family: every head's slots `1..=count`
/// exist under the head's id and point at backends of the head's family; every head has
/// metadata; a default-scope head that sends in-cluster clients to the internal scope has that
/// entry. Across both: a service or backend id names one entry of one family (one id space),
/// and every affinity member names a frontend's id and a backend.
pub fn reader_view(contents: &Contents) -> Result<()> {
    let mut ids = HashSet::new();
    check_family(&contents.services, &contents.backends, contents, &mut ids)?;
    check_family(&contents.services6, &contents.backends6, contents, &mut ids)?;
    if let Some(id) = contents
        .backends
        .keys()
        .find(|id| contents.backends6.contains_key(id))
    {
        bail!("backend id {id} is in both families' backend maps");
    }
    for member in contents.affinity_match.keys() {
        if !ids.contains(&member.service_id) {
            bail!("affinity member {member:?} names no frontend");
        }
        if !contents.backends.contains_key(&member.backend_id)
            && !contents.backends6.contains_key(&member.backend_id)
        {
            bail!("affinity member {member:?} names no backend");
        }
    }
    Ok(())
}

/// The checks of one family's services map against its backends map; adds the heads' ids to
/// `ids`, failing on an id another head has.
fn check_family<A: MapAddr>(
    services: &HashMap<ServiceKeyOf<A>, ServiceValue>,
    backends: &HashMap<u32, BackendOf<A>>,
    contents: &Contents,
    ids: &mut HashSet<u32>,
) -> Result<()> {
    for (key, head) in services {
        if key.slot != 0 {
            continue;
        }
        let frontend = frontend_name(key);
        if !ids.insert(head.service_id) {
            bail!("{frontend} has id {}, as another head has", head.service_id);
        }
        for slot in 1..=head.count {
            let slot_key = ServiceKeyOf { slot, ..*key };
            let Some(value) = services.get(&slot_key) else {
                bail!(
                    "{frontend} counts {} slots but has no slot {slot}",
                    head.count
                );
            };
            if value.service_id != head.service_id {
                bail!("slot {slot} of {frontend} has another frontend's id");
            }
            if !backends.contains_key(&value.backend_id) {
                bail!(
                    "slot {slot} of {frontend} points at no backend of its family ({})",
                    value.backend_id
                );
            }
        }
        if !contents.service_meta.contains_key(&head.service_id) {
            bail!("{frontend} (id {}) has no metadata", head.service_id);
        }
        if key.scope == SVC_SCOPE_DEFAULT && head.flags & SVC_F_TWO_SCOPES != 0 {
            let internal = ServiceKeyOf {
                scope: SVC_SCOPE_INTERNAL,
                ..*key
            };
            if !services.contains_key(&internal) {
                bail!("{frontend} sends in-cluster clients to an internal entry it has not");
            }
        }
    }
    Ok(())
}

fn socket_addr<A: MapAddr>(addr: A, port: u16) -> SocketAddr {
    SocketAddr::new(addr.ip(), port_from_net(port))
}

fn frontend_name<A: MapAddr>(key: &ServiceKeyOf<A>) -> String {
    let addr = socket_addr(key.addr, key.port);
    format!("frontend {addr} proto {} scope {}", key.proto, key.scope)
}

impl Contents {
    /// What `tables` hold, but for the counters (which the trait does not read).
    pub fn read(tables: &mut dyn ServiceTables) -> Result<Self> {
        fn all<K: Eq + Hash, V>(entries: Vec<(K, V)>) -> HashMap<K, V> {
            entries.into_iter().collect()
        }
        Ok(Self {
            services: all(tables.services().entries()?),
            backends: all(tables.backends().entries()?),
            service_meta: all(tables.service_meta().entries()?),
            source_ranges: all(tables.source_ranges().entries()?),
            affinity_match: all(tables.affinity_match().entries()?),
            skipped: all(tables.skipped().entries()?),
            services6: all(tables.services6().entries()?),
            backends6: all(tables.backends6().entries()?),
            source_ranges6: all(tables.source_ranges6().entries()?),
            service_counters: Vec::new(),
            backend_counters: Vec::new(),
        })
    }

    /// The contents as sorted text lines, one entry a line, for golden files. The IPv6 maps'
    /// sections come only when they hold something.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut lines = |title: &str, mut lines: Vec<String>, always: bool| {
            if !always && lines.is_empty() {
                return;
            }
            lines.sort();
            let _ = writeln!(out, "{title}:");
            for line in lines {
                let _ = writeln!(out, "  {line}");
            }
        };
        lines("services", render_services(&self.services), true);
        lines("backends", render_backends(&self.backends), true);
        lines("services6", render_services(&self.services6), false);
        lines("backends6", render_backends(&self.backends6), false);
        lines(
            "service meta",
            self.service_meta
                .iter()
                .map(|(id, meta)| {
                    format!(
                        "{id:>4}: {} kind {} type {} policy {:#04x} proto {} port {} health {}",
                        meta.name(),
                        meta.kind,
                        meta.svc_type,
                        meta.policy,
                        meta.proto,
                        u16::from_be(meta.port),
                        u16::from_be(meta.health_check_port)
                    )
                })
                .collect(),
            true,
        );
        lines(
            "source ranges",
            self.source_ranges
                .keys()
                .map(|(id, net)| format!("{id:>4}: {net}"))
                .collect(),
            true,
        );
        lines(
            "source ranges6",
            self.source_ranges6
                .keys()
                .map(|(id, net)| format!("{id:>4}: {net}"))
                .collect(),
            false,
        );
        lines(
            "affinity match",
            self.affinity_match
                .keys()
                .map(|key| format!("{:>4}: backend {}", key.service_id, key.backend_id))
                .collect(),
            true,
        );
        lines(
            "skipped",
            self.skipped
                .iter()
                .map(|(key, value)| {
                    format!("{}: type {} {}", key.name(), value.svc_type, value.reason())
                })
                .collect(),
            true,
        );
        out
    }
}

fn render_services<A: MapAddr>(services: &HashMap<ServiceKeyOf<A>, ServiceValue>) -> Vec<String> {
    services
        .iter()
        .map(|(key, value)| {
            let addr = socket_addr(key.addr, key.port).to_string();
            let frontend = format!(
                "{addr:<21} proto {:>2} scope {} slot {:>2}",
                key.proto, key.scope, key.slot
            );
            if key.slot == 0 {
                format!(
                    "{frontend}: id {} count {} flags {:#06x} affinity {}",
                    value.service_id, value.count, value.flags, value.affinity_timeout
                )
            } else {
                format!(
                    "{frontend}: id {} backend {}",
                    value.service_id, value.backend_id
                )
            }
        })
        .collect()
}

fn render_backends<A: MapAddr>(backends: &HashMap<u32, BackendOf<A>>) -> Vec<String> {
    backends
        .iter()
        .map(|(id, backend)| {
            let addr = socket_addr(backend.addr, backend.port);
            format!("{id:>4}: {addr} flags {:#04x}", backend.flags)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proxy_common::{Addr6, BackendOf, MetaFields, ServiceKey6, net::ip6_to_net};

    use super::*;

    fn v6(text: &str) -> Addr6 {
        ip6_to_net(text.parse().expect("valid"))
    }

    /// An IPv6 head with one slot whose backend id is `backend_id`.
    fn ipv6_frontend(backend_id: u32) -> Contents {
        let key = ServiceKey6 {
            addr: v6("fd00:19::10"),
            port: 80u16.to_be(),
            slot: 0,
            proto: proxy_common::IPPROTO_TCP,
            scope: SVC_SCOPE_DEFAULT,
            _pad: 0,
        };
        let head = ServiceValue::head(1, 1, 0, 0);
        let mut contents = Contents::default();
        contents.services6.insert(key, head);
        contents
            .services6
            .insert(ServiceKey6 { slot: 1, ..key }, head.slot(backend_id));
        contents
            .service_meta
            .insert(1, ServiceMeta::new("default/web", MetaFields::default()));
        contents
    }

    #[test]
    fn an_ipv6_slot_must_point_at_an_ipv6_backend() {
        let backend6 = BackendOf {
            addr: v6("fd00:18::1"),
            port: 8080u16.to_be(),
            flags: 0,
            _pad: 0,
        };
        let mut good = ipv6_frontend(7);
        good.backends6.insert(7, backend6);
        reader_view(&good).expect("consistent");

        let mut wrong_family = ipv6_frontend(7);
        wrong_family.backends.insert(7, Backend::default());
        let err = reader_view(&wrong_family).unwrap_err().to_string();
        assert!(err.contains("no backend of its family"), "{err}");

        let mut both = good.clone();
        both.backends.insert(7, Backend::default());
        let err = reader_view(&both).unwrap_err().to_string();
        assert!(err.contains("both families"), "{err}");
    }
}
