//! The store glue: one thread owns the Redis connection (the `redis`
//! crate's blocking client), another listens on the events channel.
//! Workers never block on the store: they send a job over a channel and
//! await a [`Oneshot`] whose waker the store thread wakes. Jobs that arrive
//! together go out as one pipeline (one round trip for all of them); each
//! handshake waits for exactly one round trip.
//!
//! The store thread also keeps this relay's live sessions (a mirror), so it
//! can renew their leases every `lease / 3` in one call, and write them
//! again when the store comes back after an outage (it may have restarted
//! empty: their tickets must not become usable again, and their counts must
//! not vanish).
//!
//! While the store is unreachable every job fails at once (no queueing
//! behind a dead connection); the thread reconnects by itself with a
//! backoff of 100 ms doubling to 2 s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Script, Value};

pub use super::oneshot::{oneshot, Oneshot, Sender};

use super::{
    decode_admit, decode_revoke, Admit, AdmitArgs, Event, FleetConfig, Item, Keys, ReleaseArgs,
    Revoked, Selector,
};
use crate::log::{self, V};
use crate::registry::JtiHash;

/// Connect, read and write timeout of a store connection.
pub const IO_TIMEOUT: Duration = Duration::from_millis(1000);
/// Jobs sent in one pipeline at most.
const MAX_BATCH: usize = 256;
/// Releases kept for a retry while the store is down.
const MAX_PENDING_RELEASES: usize = 65_536;
/// How long a release may wait to go out with other calls (a session's
/// end is not waited for; a handshake is).
const RELEASE_DELAY: Duration = Duration::from_millis(5);
/// Round-trip histogram bounds (seconds).
const RTT_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---- errors and counters ---------------------------------------------------------

/// Why a store call gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Not connected (down, or reconnecting).
    Unavailable,
    /// The store answered something the scripts never return.
    Protocol,
}

/// `nexor_fleet_store_*`.
pub struct Stats {
    pub up: AtomicBool,
    pub errors: AtomicU64,
    rtt_counts: [AtomicU64; 10],
    rtt_count: AtomicU64,
    rtt_sum_us: AtomicU64,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            up: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            rtt_counts: std::array::from_fn(|_| AtomicU64::new(0)),
            rtt_count: AtomicU64::new(0),
            rtt_sum_us: AtomicU64::new(0),
        }
    }

    fn rtt(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = RTT_BUCKETS.iter().position(|b| s <= *b) {
            self.rtt_counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.rtt_count.fetch_add(1, Ordering::Relaxed);
        self.rtt_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Prometheus text of the three metrics.
    pub fn render(&self, o: &mut String) {
        use std::fmt::Write;
        let up = u8::from(self.up.load(Ordering::Relaxed));
        let _ = writeln!(
            o,
            "# HELP {n} 1 while this relay is connected to the fleet store.\n# TYPE {n} gauge\n{n} {up}",
            n = super::METRIC_UP
        );
        let _ = writeln!(
            o,
            "# HELP {n} Failed store connections and calls.\n# TYPE {n} counter\n{n} {}",
            self.errors.load(Ordering::Relaxed),
            n = super::METRIC_ERRORS
        );
        let n = super::METRIC_RTT;
        let _ = writeln!(
            o,
            "# HELP {n} Fleet store round trips (one pipeline).\n# TYPE {n} histogram"
        );
        let mut cum = 0;
        for (i, b) in RTT_BUCKETS.iter().enumerate() {
            cum += self.rtt_counts[i].load(Ordering::Relaxed);
            let _ = writeln!(o, "{n}_bucket{{le=\"{b}\"}} {cum}");
        }
        let count = self.rtt_count.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "{n}_bucket{{le=\"+Inf\"}} {count}\n{n}_sum {}\n{n}_count {count}",
            self.rtt_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
}

// ---- the handle the rest of the relay holds --------------------------------------

/// One live session as the store thread remembers it.
struct Mirror {
    args: Box<AdmitArgs>,
    reconnect: bool,
    deadline: u64,
}

/// An admission waiting for the store, and where its answer goes.
type AdmitJob = (Box<AdmitArgs>, Sender<Result<Admit, StoreError>>);

enum Job {
    Admit(Box<AdmitArgs>, Sender<Result<Admit, StoreError>>),
    Release(Box<ReleaseArgs>),
    /// Releases wait in [`Fleet`]'s shared list: the first one into an
    /// empty list wakes the thread with this, the others do not.
    Released,
    Revoke {
        sel: Selector,
        now_ms: u64,
        grace_ms: u64,
        unseen_until_ms: u64,
        reply: Sender<Result<Revoked, StoreError>>,
    },
    List(Sender<Result<Vec<serde_json::Value>, StoreError>>),
    Stop,
}

/// Releases handed from the workers to the store thread.
type SharedReleases = Arc<std::sync::Mutex<Vec<ReleaseArgs>>>;

/// What the events listener calls: a revoke to apply to this relay's
/// sessions, or one of its sessions (by id) replaced.
pub type EventHandler = Box<dyn Fn(Event) + Send + Sync>;

/// The fleet store as the relay sees it.
pub struct Fleet {
    pub cfg: FleetConfig,
    pub relay_id: String,
    /// `<relay_id>#<incarnation>`.
    pub node: String,
    pub keys: Keys,
    pub stats: Arc<Stats>,
    tx: mpsc::Sender<Job>,
    releases: SharedReleases,
    next_sid: AtomicU64,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("redis", &self.cfg.redis)
            .field("node", &self.node)
            .finish()
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

impl Fleet {
    /// Starts the store thread and the events listener. Connecting happens
    /// on the thread: a store that is down at start is only "down".
    pub fn start(cfg: FleetConfig, on_event: EventHandler) -> Result<Arc<Fleet>, String> {
        let client = match &cfg.ca {
            Some(crate::config::fleet::FleetCa::Pem(pem)) => redis::Client::build_with_tls(
                cfg.redis.expose(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            _ => redis::Client::open(cfg.redis.expose()),
        }
        .map_err(|e| format!("fleet: {}", redact(&e.to_string(), &cfg)))?;
        let relay_id = cfg
            .relay_id
            .clone()
            .unwrap_or_else(crate::config::default_relay_id);
        let node = super::node_name(&relay_id, random_u64());
        let keys = Keys::new(&cfg.key_prefix);
        let stats = Arc::new(Stats::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let shared: SharedReleases = Arc::default();
        let mut worker = StoreThread {
            client: client.clone(),
            cfg: cfg.clone(),
            relay_id: relay_id.clone(),
            node: node.clone(),
            keys: keys.clone(),
            stats: stats.clone(),
            scripts: Scripts::new(),
            con: None,
            was_down: false,
            backoff: Duration::from_millis(100),
            retry_at: Instant::now(),
            live: HashMap::new(),
            releases: Vec::new(),
            releases_due: None,
            shared: shared.clone(),
        };
        std::thread::Builder::new()
            .name("nexor-fleet".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| format!("fleet: cannot start its thread: {e}"))?;
        let listener = Listener {
            client,
            cfg: cfg.clone(),
            channel: keys.events(),
            stop: stop.clone(),
            on_event,
        };
        std::thread::Builder::new()
            .name("nexor-fleet-events".into())
            .spawn(move || listener.run())
            .map_err(|e| format!("fleet: cannot start its thread: {e}"))?;
        Ok(Arc::new(Fleet {
            cfg,
            relay_id,
            node,
            keys,
            stats,
            tx,
            releases: shared,
            next_sid: AtomicU64::new(0),
            stop,
        }))
    }

    /// A fresh session id for [`AdmitArgs::sid`].
    pub fn next_sid(&self) -> u64 {
        self.next_sid.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The member of a session admitted with `args`.
    pub fn member(&self, args: &AdmitArgs) -> String {
        super::member(args.now_ms, &self.node, args.sid)
    }

    fn send(&self, job: Job) -> bool {
        self.tx.send(job).is_ok()
    }

    /// The one round trip of a handshake. Fails at once while the store is
    /// down. A session admitted by the store after the caller gave up (its
    /// future dropped) is released again by the store thread.
    pub fn admit(&self, args: AdmitArgs) -> Oneshot<Result<Admit, StoreError>> {
        let (tx, rx) = oneshot();
        if !self.stats.up.load(Ordering::Relaxed) {
            let _ = tx.send(Err(StoreError::Unavailable));
            return rx;
        }
        // An admission delivered just as the handshake gave up (the
        // receiver dropped before taking it) is released again.
        let undo = args.release(self.member(&args));
        let jobs = self.tx.clone();
        rx.on_orphan(Box::new(move |v| {
            if let Ok(Admit::Admitted { deadline, .. }) = v {
                let mut r = undo;
                r.now_ms = now_ms();
                r.deadline = deadline;
                let _ = jobs.send(Job::Release(Box::new(r)));
            }
        }));
        if let Err(mpsc::SendError(Job::Admit(_, tx))) =
            self.tx.send(Job::Admit(Box::new(args), tx))
        {
            let _ = tx.send(Err(StoreError::Unavailable));
        }
        rx
    }

    /// A session ended (fire and forget; retried after an outage).
    pub fn release(&self, args: ReleaseArgs) {
        // A session's end is not waited for: it joins the shared list, and
        // only the first into an empty list wakes the store thread (which
        // sends them together within RELEASE_DELAY).
        let mut list = self.releases.lock().unwrap_or_else(|p| p.into_inner());
        list.push(args);
        if list.len() == 1 {
            drop(list);
            self.send(Job::Released);
        }
    }

    /// A fleet-wide revoke (from the admin thread; blocks it, never a
    /// worker).
    pub fn revoke(
        &self,
        sel: Selector,
        now_ms: u64,
        grace_ms: u64,
        unseen_until_ms: u64,
    ) -> Result<Revoked, StoreError> {
        let (reply, rx) = oneshot();
        if !self.send(Job::Revoke {
            sel,
            now_ms,
            grace_ms,
            unseen_until_ms,
            reply,
        }) {
            return Err(StoreError::Unavailable);
        }
        rx.wait(4 * IO_TIMEOUT)
            .unwrap_or(Err(StoreError::Unavailable))
    }

    /// Every relay's live sessions (from the admin thread).
    pub fn list(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let (reply, rx) = oneshot();
        if !self.send(Job::List(reply)) {
            return Err(StoreError::Unavailable);
        }
        rx.wait(4 * IO_TIMEOUT)
            .unwrap_or(Err(StoreError::Unavailable))
    }

    pub fn up(&self) -> bool {
        self.stats.up.load(Ordering::Relaxed)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.send(Job::Stop);
    }
}

/// An error text with the store's password (if any) taken out.
fn redact(msg: &str, cfg: &FleetConfig) -> String {
    let url = cfg.redis.expose();
    let mut out = msg.replace(url, &cfg.redis.redacted());
    if let Some((_, rest)) = url.split_once("://") {
        let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, pass)) = userinfo.split_once(':') {
                if !pass.is_empty() {
                    out = out.replace(pass, "***");
                }
            }
        }
    }
    out
}

// ---- the store thread ------------------------------------------------------------

struct Scripts {
    admit: Script,
    release: Script,
    renew: Script,
    revoke: Script,
    list: Script,
    resync: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            admit: Script::new(super::ADMIT_LUA),
            release: Script::new(super::RELEASE_LUA),
            renew: Script::new(super::RENEW_LUA),
            revoke: Script::new(super::REVOKE_LUA),
            list: Script::new(super::LIST_LUA),
            resync: Script::new(super::RESYNC_LUA),
        }
    }

    fn load(&self, con: &mut redis::Connection) -> redis::RedisResult<()> {
        for s in [
            &self.admit,
            &self.release,
            &self.renew,
            &self.revoke,
            &self.list,
            &self.resync,
        ] {
            s.prepare_invoke().load(con)?;
        }
        Ok(())
    }
}

struct StoreThread {
    client: redis::Client,
    cfg: FleetConfig,
    relay_id: String,
    node: String,
    keys: Keys,
    stats: Arc<Stats>,
    scripts: Scripts,
    con: Option<redis::Connection>,
    /// The store was unreachable since the last connection: write this
    /// relay's sessions again once connected.
    was_down: bool,
    backoff: Duration,
    retry_at: Instant,
    /// This relay's live sessions in the store, by session id.
    live: HashMap<u64, Mirror>,
    /// Releases to send: with the next admission, or at
    /// `releases_due` (they wait up to [`RELEASE_DELAY`] to share a round
    /// trip), or once the store is back.
    releases: Vec<ReleaseArgs>,
    releases_due: Option<Instant>,
    /// Where [`Fleet::release`] leaves them.
    shared: SharedReleases,
}

/// `EVALSHA <hash> <n> keys... args...` in one buffer.
fn evalsha(script: &Script, keys: Vec<String>, args: Vec<String>) -> redis::Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash()).arg(keys.len());
    for k in keys {
        c.arg(k);
    }
    for a in args {
        c.arg(a);
    }
    c
}

/// Converts a script's reply into [`Item`]s (integers and strings).
pub fn items(v: &Value) -> Option<Vec<Item>> {
    let Value::Array(a) = v else { return None };
    a.iter()
        .map(|x| match x {
            Value::Int(i) => Some(Item::Int(*i)),
            Value::BulkString(b) => Some(Item::Str(String::from_utf8_lossy(b).into_owned())),
            Value::SimpleString(s) => Some(Item::Str(s.clone())),
            Value::Okay => Some(Item::Str("OK".into())),
            _ => None,
        })
        .collect()
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

impl StoreThread {
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        let renew_every = self.cfg.lease / 3;
        let mut next_renew = Instant::now();
        loop {
            if self.con.is_none() && Instant::now() >= self.retry_at {
                self.connect();
                if self.con.is_some() {
                    next_renew = Instant::now();
                }
            }
            if self.con.is_some() && Instant::now() >= next_renew {
                // Releases first, so the store's count of this relay's
                // sessions is the mirror's.
                self.take_handed();
                while !self.releases.is_empty() && self.con.is_some() {
                    let n = self.releases.len().min(MAX_BATCH);
                    let batch: Vec<ReleaseArgs> = self.releases.drain(..n).collect();
                    self.pipeline(Vec::new(), batch);
                }
                self.releases_due = None;
                self.renew();
                next_renew = Instant::now() + renew_every;
            }
            let mut wake = if self.con.is_some() {
                next_renew
            } else {
                self.retry_at
            };
            if let (Some(due), true) = (self.releases_due, self.con.is_some()) {
                wake = wake.min(due);
            }
            let mut admits = Vec::new();
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(first) => {
                    let mut job = Some(first);
                    while let Some(j) = job.take() {
                        match j {
                            Job::Stop => return,
                            Job::Admit(a, tx) => admits.push((a, tx)),
                            Job::Release(r) => self.queue_release(*r),
                            Job::Released => {}
                            Job::Revoke {
                                sel,
                                now_ms,
                                grace_ms,
                                unseen_until_ms,
                                reply,
                            } => {
                                let r = self.revoke(&sel, now_ms, grace_ms, unseen_until_ms);
                                let _ = reply.send(r);
                            }
                            Job::List(reply) => {
                                let _ = reply.send(self.list());
                            }
                        }
                        if admits.len() < MAX_BATCH {
                            job = rx.try_recv().ok();
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            self.take_handed();
            let releases_due = self.releases_due.is_some_and(|d| Instant::now() >= d)
                || self.releases.len() >= MAX_BATCH;
            if !admits.is_empty() || (releases_due && self.con.is_some()) {
                let n = self.releases.len().min(MAX_BATCH);
                let releases: Vec<ReleaseArgs> = self.releases.drain(..n).collect();
                self.releases_due = (!self.releases.is_empty()).then(Instant::now);
                self.pipeline(admits, releases);
            }
        }
    }

    /// Takes the releases the workers left in the shared list.
    fn take_handed(&mut self) {
        let handed: Vec<ReleaseArgs> =
            std::mem::take(&mut *self.shared.lock().unwrap_or_else(|p| p.into_inner()));
        for r in handed {
            self.queue_release(r);
        }
    }

    /// A release waits (up to [`RELEASE_DELAY`]) to share a round trip.
    fn queue_release(&mut self, r: ReleaseArgs) {
        self.live.remove(&r.sid);
        if self.releases.len() < MAX_PENDING_RELEASES {
            self.releases.push(r);
        }
        self.releases_due
            .get_or_insert_with(|| Instant::now() + RELEASE_DELAY);
    }

    fn connect(&mut self) {
        let result = self
            .client
            .get_connection_with_timeout(IO_TIMEOUT)
            .and_then(|mut con| {
                con.set_read_timeout(Some(IO_TIMEOUT))?;
                con.set_write_timeout(Some(IO_TIMEOUT))?;
                self.scripts.load(&mut con)?;
                Ok(con)
            });
        match result {
            Ok(con) => {
                self.con = Some(con);
                self.backoff = Duration::from_millis(100);
                log::info(
                    "fleet store connected",
                    &[
                        ("redis", V::S(&self.cfg.redis.redacted())),
                        ("node", V::S(&self.node)),
                    ],
                );
                if self.was_down {
                    self.resync();
                }
                if self.con.is_some() {
                    self.was_down = false;
                    self.stats.up.store(true, Ordering::Relaxed);
                    if !self.releases.is_empty() {
                        self.releases_due = Some(Instant::now());
                    }
                }
            }
            Err(e) => self.failed(&e),
        }
    }

    /// A connection or call failed: drop the connection, count it, and
    /// retry after the backoff.
    fn failed(&mut self, e: &redis::RedisError) {
        let was_up = self.stats.up.swap(false, Ordering::Relaxed);
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if was_up || !self.was_down {
            log::warn(
                "fleet store unreachable (retrying)",
                &[
                    ("redis", V::S(&self.cfg.redis.redacted())),
                    ("error", V::S(&redact(&e.to_string(), &self.cfg))),
                ],
            );
        }
        self.con = None;
        self.was_down = true;
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
    }

    fn pipeline(&mut self, admits: Vec<AdmitJob>, releases: Vec<ReleaseArgs>) {
        let Some(con) = self.con.as_mut() else {
            for (_, tx) in admits {
                let _ = tx.send(Err(StoreError::Unavailable));
            }
            self.queue_releases(releases);
            return;
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        // Releases first: a session that ended before a reconnect of its
        // ticket arrived frees the ticket before the reconnect is decided.
        // EVALSHA commands built in one buffer each (the Script type gives
        // the hash and loads the code; NOSCRIPT is handled below).
        let mut invocations = Vec::with_capacity(admits.len() + releases.len());
        for r in &releases {
            invocations.push(evalsha(
                &self.scripts.release,
                r.keys(&self.keys, &self.node),
                r.argv(),
            ));
        }
        for (a, _) in &admits {
            invocations.push(evalsha(
                &self.scripts.admit,
                a.keys(&self.keys, &self.node),
                a.argv(&self.keys, &self.relay_id, &self.node),
            ));
        }
        for c in &invocations {
            pipe.add_command(c.clone());
        }
        let t = Instant::now();
        let result: redis::RedisResult<Vec<Value>> = pipe.query(con);
        self.stats.rtt(t.elapsed());
        let mut replies = match result {
            Ok(v) if v.len() == invocations.len() => v,
            Ok(_) => {
                drop(invocations);
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                for (_, tx) in admits {
                    let _ = tx.send(Err(StoreError::Protocol));
                }
                return;
            }
            Err(e) => {
                drop(invocations);
                self.failed(&e);
                for (_, tx) in admits {
                    let _ = tx.send(Err(StoreError::Unavailable));
                }
                self.queue_releases(releases);
                return;
            }
        };
        // Scripts flushed from the store meanwhile (SCRIPT FLUSH, a
        // failover): load them and run again exactly the calls that did not
        // run.
        if replies.iter().any(is_noscript) {
            let again: Vec<usize> = (0..replies.len())
                .filter(|&i| is_noscript(&replies[i]))
                .collect();
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &again {
                pipe.add_command(invocations[i].clone());
            }
            let rerun = self
                .scripts
                .load(con)
                .and_then(|_| pipe.query::<Vec<Value>>(con));
            match rerun {
                Ok(v) if v.len() == again.len() => {
                    for (i, r) in again.into_iter().zip(v) {
                        replies[i] = r;
                    }
                }
                _ => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        drop(invocations);
        let mut replies = replies.into_iter();
        for reply in replies.by_ref().take(releases.len()) {
            if matches!(reply, Value::ServerError(_)) {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (a, tx) in admits {
            let reply = replies.next().unwrap_or(Value::Nil);
            let decoded = items(&reply).and_then(|i| decode_admit(&i));
            let out = match decoded {
                Some(d) => Ok(d),
                None => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    log::warn(
                        "fleet store: unexpected admission reply",
                        &[("reply", V::S(&short(&format!("{reply:?}"))))],
                    );
                    Err(StoreError::Protocol)
                }
            };
            let admitted = match &out {
                Ok(Admit::Admitted {
                    reconnect,
                    deadline,
                    ..
                }) => Some((*reconnect, *deadline)),
                _ => None,
            };
            let undo = match tx.send(out) {
                Err(Ok(Admit::Admitted { deadline, .. })) => Some(deadline),
                _ => None,
            };
            if let Some(deadline) = undo {
                // The handshake gave up waiting: undo the admission.
                self.queue_release(ReleaseArgs {
                    now_ms: now_ms(),
                    jti: a.jti,
                    member: super::member(a.now_ms, &self.node, a.sid),
                    sid: a.sid,
                    grant: false,
                    grace_ms: a.grace_ms,
                    sub: a.sub.clone(),
                    vm: a.vm.clone(),
                    client: a.client.clone(),
                    deadline,
                    keep_ms: a.keep_ms,
                });
            } else if let Some((reconnect, deadline)) = admitted {
                self.live.insert(
                    a.sid,
                    Mirror {
                        args: a,
                        reconnect,
                        deadline,
                    },
                );
            }
        }
        if !self.releases.is_empty() {
            self.releases_due.get_or_insert_with(Instant::now);
        }
    }

    /// Releases that could not be sent: kept (bounded) for when the store
    /// is back.
    fn queue_releases(&mut self, releases: Vec<ReleaseArgs>) {
        let room = MAX_PENDING_RELEASES.saturating_sub(self.releases.len());
        let mut releases = releases;
        releases.truncate(room);
        releases.append(&mut self.releases);
        self.releases = releases;
        self.releases_due = None;
    }

    fn renew(&mut self) {
        let mut inv = self.scripts.renew.prepare_invoke();
        self.lease_call(&mut inv);
        let Some(con) = self.con.as_mut() else { return };
        let t = Instant::now();
        let r: redis::RedisResult<u64> = inv.invoke(con);
        self.stats.rtt(t.elapsed());
        match r {
            Ok(n) if n as usize == self.live.len() => {}
            Ok(_) => self.resync(),
            Err(e) => self.failed(&e),
        }
    }

    /// The keys and leading arguments the renew and resync scripts share:
    /// this relay's sessions, the nodes, the index of all, now, the lease,
    /// the grace, the key prefix and this relay's id.
    fn lease_call(&self, inv: &mut redis::ScriptInvocation<'_>) {
        inv.key(self.keys.sessions(&self.node))
            .key(self.keys.nodes())
            .key(self.keys.all())
            .arg(now_ms())
            .arg(self.cfg.lease.as_millis() as u64)
            .arg(self.grace_ms())
            .arg(&self.keys.prefix)
            .arg(&self.node);
    }

    /// The grace as the renew script needs it: the longest a dead relay's
    /// session may still be reconnected after its lease. The store keeps a
    /// ticket entry at least that long past the lease.
    fn grace_ms(&self) -> u64 {
        // Admissions carry the configured grace; renewals use the largest
        // one seen, defaulting to the README's 30 s.
        self.live
            .values()
            .map(|m| m.args.grace_ms)
            .max()
            .unwrap_or(30_000)
    }

    /// Writes this relay's live sessions again (after an outage: the store
    /// may have restarted empty).
    fn resync(&mut self) {
        let mut inv = self.scripts.resync.prepare_invoke();
        self.lease_call(&mut inv);
        for m in self.live.values() {
            inv.arg(super::resync_json(
                &m.args,
                &self.relay_id,
                &self.node,
                m.reconnect,
                m.deadline,
            ));
        }
        let Some(con) = self.con.as_mut() else { return };
        let r: redis::RedisResult<u64> = inv.invoke(con);
        match r {
            Ok(n) => log::info(
                "fleet store: live sessions written again",
                &[("sessions", V::N(n)), ("node", V::S(&self.node))],
            ),
            Err(e) => self.failed(&e),
        }
    }

    fn revoke(
        &mut self,
        sel: &Selector,
        now: u64,
        grace_ms: u64,
        unseen_until_ms: u64,
    ) -> Result<Revoked, StoreError> {
        let Some(con) = self.con.as_mut() else {
            return Err(StoreError::Unavailable);
        };
        let hashes = match sel {
            Selector::JtiPrefix(p) => {
                let pattern = self.keys.ticket_pattern(p);
                let iter: redis::RedisResult<redis::Iter<String>> = redis::cmd("SCAN")
                    .cursor_arg(0)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .clone()
                    .iter(con);
                let found: Result<Vec<JtiHash>, StoreError> = match iter {
                    Ok(it) => Ok(it
                        .filter_map(|k| k.ok())
                        .filter_map(|k| {
                            k.strip_prefix(&format!("{}t:", self.keys.prefix))
                                .and_then(JtiHash::parse)
                        })
                        .take(100_000)
                        .collect()),
                    Err(_) => Err(StoreError::Unavailable),
                };
                found?
            }
            _ => Vec::new(),
        };
        let Some(con) = self.con.as_mut() else {
            return Err(StoreError::Unavailable);
        };
        let (keys, argv) =
            super::revoke_call(&self.keys, sel, &hashes, now, grace_ms, unseen_until_ms);
        let mut inv = self.scripts.revoke.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in argv {
            inv.arg(a);
        }
        let t = Instant::now();
        let r: redis::RedisResult<Value> = inv.invoke(con);
        self.stats.rtt(t.elapsed());
        match r {
            Ok(v) => items(&v)
                .and_then(|i| decode_revoke(&i))
                .ok_or(StoreError::Protocol),
            Err(e) => {
                self.failed(&e);
                Err(StoreError::Unavailable)
            }
        }
    }

    fn list(&mut self) -> Result<Vec<serde_json::Value>, StoreError> {
        let Some(con) = self.con.as_mut() else {
            return Err(StoreError::Unavailable);
        };
        let mut inv = self.scripts.list.prepare_invoke();
        inv.key(self.keys.nodes())
            .arg(now_ms())
            .arg(&self.keys.prefix);
        let r: redis::RedisResult<Vec<String>> = inv.invoke(con);
        match r {
            Ok(v) => Ok(v
                .iter()
                .filter_map(|s| serde_json::from_str(s).ok())
                .collect()),
            Err(e) => {
                self.failed(&e);
                Err(StoreError::Unavailable)
            }
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

// ---- the events listener ---------------------------------------------------------

struct Listener {
    client: redis::Client,
    cfg: FleetConfig,
    channel: String,
    stop: Arc<AtomicBool>,
    on_event: EventHandler,
}

impl Listener {
    fn run(self) {
        let mut backoff = Duration::from_millis(100);
        while !self.stop.load(Ordering::Relaxed) {
            match self.listen() {
                Ok(()) => return,
                Err(_) => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Subscribes and hands every event to the handler until the
    /// connection fails (Err) or the relay stops (Ok).
    fn listen(&self) -> redis::RedisResult<()> {
        let mut con = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut ps = con.as_pubsub();
        ps.subscribe(&self.channel)?;
        ps.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut idle = Instant::now();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match ps.get_message() {
                Ok(msg) => {
                    idle = Instant::now();
                    if let Some(ev) = Event::decode(msg.get_payload_bytes()) {
                        (self.on_event)(ev);
                    }
                }
                Err(e) if e.is_timeout() => {
                    // A store that vanished without closing the socket:
                    // ping it now and then.
                    if idle.elapsed() > Duration::from_secs(5) {
                        idle = Instant::now();
                        ps.ping::<Value>()?;
                    }
                }
                Err(e) => {
                    let _ = &self.cfg;
                    return Err(e);
                }
            }
        }
    }
}
