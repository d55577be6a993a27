//! The recording writer: one thread per process, started with the first
//! recording, owns every recording file. Workers never touch a file:
//!
//! ```text
//! pump (any worker) ── tap: copy + Instant ──▶ channel ──▶ writer thread
//!                          │ over QUEUE_MAX bytes queued:        │ decode (frames, termproxy, RFB)
//!                          │ recording stops, "queue_full"       │ encode (asciicast v3 / vncrec)
//!                          ▼                                     ▼ NAME.part, SHA-256, rename
//! session: open (await reply) … close (await Summary) ◀──────── reply
//! ```
//!
//! The channel is unbounded in messages but bounded in bytes: every data
//! message is counted in [`QUEUED`] until the writer has handled it, and a
//! tap that would pass [`QUEUE_MAX`] stops that recording (marked
//! truncated, `queue_full`) instead of waiting: the pump never blocks and
//! the console goes on. Open and close are small and never refused, so a
//! recording is always closed. Replies come back through [`Reply`], a
//! one-shot whose waker the writer thread wakes (monoio's `sync` feature).
//!
//! One thread for the process, not one per worker: recording is rare next
//! to relaying, one thread's buffered writes (64 KiB) keep up with a disk
//! far beyond what the consoles of one host produce (docs/deploy.md has
//! the bytes per console-hour), and a single owner keeps the file handling
//! simple. A disk that stalls stalls only this thread: the queue fills and
//! recordings stop, truncated, while the consoles go on.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{
    vnc_header, vnc_record, Cast, CastDir, Payloads, RfbSkip, TermEvent, Termproxy, VncDir,
};
use crate::ws::frame::Sender;

/// Bytes queued for the writer (all recordings) before taps stop.
pub const QUEUE_MAX: usize = 64 << 20;
/// What a queued message costs beyond its bytes.
const MSG_COST: usize = 64;
/// The writer's buffer per recording: written out when this full, when
/// the queue runs empty, at least each second, and at close.
const FLUSH_AT: usize = 64 << 10;
/// Buffers are written out at least this often, however busy the queue.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long a session waits for its recording to open.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a session's end waits for its recording to close.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// [`QUEUE_MAX`], or 256 KiB under the test fault `slow-recorder`.
fn queue_max() -> usize {
    if fault::slow() {
        256 << 10
    } else {
        QUEUE_MAX
    }
}

/// Debug builds only: `NEXOR_TEST_FAULTS=slow-recorder` makes the writer
/// sleep 20 ms per data message and the queue small, as a disk that
/// falls behind would (tests/recording.rs).
mod fault {
    #[cfg(debug_assertions)]
    pub fn slow() -> bool {
        static SLOW: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *SLOW.get_or_init(|| {
            std::env::var("NEXOR_TEST_FAULTS")
                .is_ok_and(|v| v.split(',').any(|f| f == "slow-recorder"))
        })
    }

    #[cfg(not(debug_assertions))]
    pub fn slow() -> bool {
        false
    }
}

/// Bytes (plus [`MSG_COST`] each) in the channel now.
pub static QUEUED: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How the bytes the pump forwards in one direction are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Plain bytes (the raw upstream of `tcp` and `demo`).
    Raw,
    /// Masked WebSocket frames (browser → a WebSocket upstream).
    ClientFrames,
    /// Unmasked WebSocket frames (anything → browser).
    ServerFrames,
}

/// What is recorded, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A terminal, as asciicast v3. `termproxy`: the browser's stream is
    /// termproxy framing (Proxmox); otherwise its bytes are the input.
    Cast { termproxy: bool },
    /// A VNC console. `handshake`: the RFB handshake passes through the
    /// relay (`tcp`, `ws`, `demo`) and is dropped from the file.
    Vnc { handshake: bool },
}

/// A recording to open.
#[derive(Debug, Clone)]
pub struct Spec {
    pub dir: PathBuf,
    /// The final file name (`NAME`; `NAME.part` while open).
    pub name: String,
    pub kind: Kind,
    pub max_bytes: u64,
    /// Start, unix microseconds (headers).
    pub unix_micros: u64,
    /// asciicast's title.
    pub title: String,
    /// Framing of the bytes forwarded browser → upstream.
    pub up: Framing,
}

/// What a closed recording was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The file name (in the recording dir).
    pub file: String,
    /// SHA-256 (hex) of the file as written.
    pub sha256: Option<String>,
    pub bytes: u64,
    /// Why the recording stopped before the session: `max_bytes`,
    /// `disk_error`, `queue_full`, `writer_timeout`.
    pub truncated: Option<&'static str>,
    /// What went wrong (an io error's text), if anything.
    pub error: Option<String>,
}

// ---- a one-shot reply from the writer thread ---------------------------------------

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

/// The writer's end of a one-shot.
struct Reply<T>(Arc<Mutex<Slot<T>>>);

impl<T> Reply<T> {
    fn send(self, v: T) {
        let waker = {
            let Ok(mut s) = self.0.lock() else { return };
            s.value = Some(v);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

fn oneshot<T>() -> (Reply<T>, Arc<Mutex<Slot<T>>>) {
    let s = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
    }));
    (Reply(s.clone()), s)
}

async fn wait<T>(slot: Arc<Mutex<Slot<T>>>, timeout: Duration) -> Option<T> {
    let f = std::future::poll_fn(move |cx| {
        let Ok(mut s) = slot.lock() else {
            return Poll::Ready(None);
        };
        match s.value.take() {
            Some(v) => Poll::Ready(Some(v)),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    });
    monoio::time::timeout(timeout, f).await.ok().flatten()
}

// ---- the session's handle ---------------------------------------------------------

enum Msg {
    Open {
        id: u64,
        spec: Box<Spec>,
        reply: Reply<Result<(), String>>,
    },
    Data {
        id: u64,
        /// Browser → upstream.
        up: bool,
        /// Payload already (not in the direction's framing).
        payload: bool,
        micros: u64,
        bytes: Vec<u8>,
    },
    Close {
        id: u64,
        micros: u64,
        queue_full: bool,
        /// None: the session never reached its relay phase (dropped).
        reply: Option<Reply<Summary>>,
    },
}

fn writer() -> Result<&'static mpsc::Sender<Msg>, String> {
    static TX: OnceLock<Result<mpsc::Sender<Msg>, String>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("nexor-recorder".into())
            .spawn(move || run(rx))
            .map(|_| tx)
            .map_err(|e| format!("cannot start the recording writer: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// One session's recording, held by its pumps: [`Recording::tap`] is all
/// the data path does.
pub struct Recording {
    id: u64,
    tx: mpsc::Sender<Msg>,
    start: Instant,
    name: String,
    stopped: Cell<bool>,
    queue_full: Cell<bool>,
    closed: Cell<bool>,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("file", &self.name)
            .finish()
    }
}

/// Opens a recording on the writer thread; the error says why not.
pub async fn open(spec: Spec) -> Result<Recording, String> {
    let tx = writer()?.clone();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let name = spec.name.clone();
    let (reply, slot) = oneshot();
    tx.send(Msg::Open {
        id,
        spec: Box::new(spec),
        reply,
    })
    .map_err(|_| "recording writer gone".to_string())?;
    let rec = Recording {
        id,
        tx,
        start: Instant::now(),
        name,
        stopped: Cell::new(false),
        queue_full: Cell::new(false),
        closed: Cell::new(false),
    };
    match wait(slot, OPEN_TIMEOUT).await {
        Some(Ok(())) => Ok(rec),
        Some(Err(e)) => {
            rec.closed.set(true);
            Err(e)
        }
        // Dropping `rec` closes (and removes) whatever opens late.
        None => Err("recording writer did not answer in time".into()),
    }
}

impl Recording {
    /// The file name once closed.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes the pump forwarded (`up`: browser → upstream), in that
    /// direction's framing. Never blocks: a full queue stops the recording.
    #[inline]
    pub fn tap(&self, up: bool, bytes: &[u8]) {
        if !self.stopped.get() && !bytes.is_empty() {
            self.send_data(up, false, bytes);
        }
    }

    /// Payload the relay wrote to the browser itself, outside the pump
    /// (termproxy's first output, sent with the 101).
    pub fn tap_payload_down(&self, bytes: &[u8]) {
        if !self.stopped.get() && !bytes.is_empty() {
            self.send_data(false, true, bytes);
        }
    }

    fn send_data(&self, up: bool, payload: bool, bytes: &[u8]) {
        let cost = bytes.len() + MSG_COST;
        if QUEUED.fetch_add(cost, Ordering::Relaxed) + cost > queue_max() {
            QUEUED.fetch_sub(cost, Ordering::Relaxed);
            return self.fall_behind();
        }
        let msg = Msg::Data {
            id: self.id,
            up,
            payload,
            micros: self.start.elapsed().as_micros() as u64,
            bytes: bytes.to_vec(),
        };
        if self.tx.send(msg).is_err() {
            QUEUED.fetch_sub(cost, Ordering::Relaxed);
            self.fall_behind();
        }
    }

    /// The writer fell behind: this recording stops, the console goes on.
    fn fall_behind(&self) {
        self.stopped.set(true);
        self.queue_full.set(true);
    }

    /// Closes the file (renamed from `.part`) and reports it.
    pub async fn close(&self) -> Summary {
        self.closed.set(true);
        self.stopped.set(true);
        let (reply, slot) = oneshot();
        let sent = self.tx.send(Msg::Close {
            id: self.id,
            micros: self.start.elapsed().as_micros() as u64,
            queue_full: self.queue_full.get(),
            reply: Some(reply),
        });
        let got = match sent {
            Ok(()) => wait(slot, CLOSE_TIMEOUT).await,
            Err(_) => None,
        };
        got.unwrap_or_else(|| Summary {
            file: format!("{}.part", self.name),
            sha256: None,
            bytes: 0,
            truncated: Some("writer_timeout"),
            error: Some("the recording writer did not close the file in time".into()),
        })
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if !self.closed.get() {
            let _ = self.tx.send(Msg::Close {
                id: self.id,
                micros: self.start.elapsed().as_micros() as u64,
                queue_full: self.queue_full.get(),
                reply: None,
            });
        }
    }
}

// ---- the writer thread -------------------------------------------------------------

enum Enc {
    Cast { cast: Cast, tp: Option<Termproxy> },
    Vnc { skip: Option<RfbSkip> },
}

struct Open {
    file: Option<File>,
    part: PathBuf,
    path: PathBuf,
    name: String,
    sha: Sha256,
    written: u64,
    buf: Vec<u8>,
    max: u64,
    truncated: Option<&'static str>,
    error: Option<String>,
    /// Frame decoders: [to browser, from browser]; None for raw bytes.
    frames: [Option<Payloads>; 2],
    enc: Enc,
    /// An event (not just the header) was written.
    data: bool,
}

fn run(rx: mpsc::Receiver<Msg>) {
    let mut open: HashMap<u64, Open> = HashMap::new();
    let mut flushed = Instant::now();
    loop {
        // A queue that never runs empty still reaches the disk each second.
        if flushed.elapsed() >= FLUSH_EVERY {
            for r in open.values_mut() {
                r.flush();
            }
            flushed = Instant::now();
        }
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(mpsc::TryRecvError::Empty) => {
                // Idle: everything buffered goes to disk.
                for r in open.values_mut() {
                    r.flush();
                }
                flushed = Instant::now();
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => return,
        };
        match msg {
            Msg::Open { id, spec, reply } => match Open::create(*spec) {
                Ok(r) => {
                    open.insert(id, r);
                    reply.send(Ok(()));
                }
                Err(e) => reply.send(Err(e)),
            },
            Msg::Data {
                id,
                up,
                payload,
                micros,
                bytes,
            } => {
                if fault::slow() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                QUEUED.fetch_sub(bytes.len() + MSG_COST, Ordering::Relaxed);
                if let Some(r) = open.get_mut(&id) {
                    r.on_data(up, payload, micros, &bytes);
                }
            }
            Msg::Close {
                id,
                micros,
                queue_full,
                reply,
            } => {
                if let Some(r) = open.remove(&id) {
                    let s = r.close(micros, queue_full, reply.is_none());
                    if let (Some(reply), Some(s)) = (reply, s) {
                        reply.send(s);
                    }
                }
            }
        }
    }
}

fn create_part(path: &std::path::Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Recordings hold what customers typed: owner only.
        o.mode(0o600);
    }
    o.open(path)
}

impl Open {
    fn create(spec: Spec) -> Result<Open, String> {
        let part = spec.dir.join(format!("{}.part", spec.name));
        let path = spec.dir.join(&spec.name);
        let file =
            create_part(&part).map_err(|e| format!("cannot create {}: {e}", part.display()))?;
        let (enc, header) = match spec.kind {
            Kind::Cast { termproxy } => {
                // termproxy starts its PTY at 80x20 (docs/proxmox.md §5).
                let rows = if termproxy { 20 } else { 24 };
                let (cast, h) = Cast::start(80, rows, spec.unix_micros / 1_000_000, &spec.title);
                (
                    Enc::Cast {
                        cast,
                        tp: termproxy.then(Termproxy::default),
                    },
                    h,
                )
            }
            Kind::Vnc { handshake } => (
                Enc::Vnc {
                    skip: handshake.then(RfbSkip::default),
                },
                vnc_header(spec.unix_micros),
            ),
        };
        let up = match spec.up {
            Framing::Raw => None,
            Framing::ClientFrames => Some(Payloads::new(Sender::Client)),
            Framing::ServerFrames => Some(Payloads::new(Sender::Server)),
        };
        let mut r = Open {
            file: Some(file),
            part,
            path,
            name: spec.name,
            sha: Sha256::new(),
            written: 0,
            buf: Vec::with_capacity(FLUSH_AT),
            max: spec.max_bytes,
            truncated: None,
            error: None,
            frames: [Some(Payloads::new(Sender::Server)), up],
            enc,
            data: false,
        };
        // The header goes to disk now: a full or read-only disk shows at
        // open, where `required` can still refuse the session.
        r.commit(header);
        r.flush();
        if let Some(e) = r.error.take() {
            drop(r.file.take());
            let _ = std::fs::remove_file(&r.part);
            return Err(format!("cannot write {}: {e}", r.part.display()));
        }
        r.data = false;
        Ok(r)
    }

    fn on_data(&mut self, up: bool, payload: bool, micros: u64, bytes: &[u8]) {
        if self.truncated.is_some() {
            return;
        }
        let d = usize::from(up);
        let mut p = Vec::new();
        let data: &[u8] = match (&mut self.frames[d], payload) {
            (Some(f), false) => {
                f.feed(bytes, &mut |s| p.extend_from_slice(s));
                &p
            }
            _ => bytes,
        };
        let mut out = Vec::new();
        match &mut self.enc {
            Enc::Cast { cast, tp } => match (up, tp) {
                (false, _) => cast.data(micros, CastDir::Output, data, &mut out),
                (true, None) => cast.data(micros, CastDir::Input, data, &mut out),
                (true, Some(tp)) => {
                    let mut input = Vec::new();
                    tp.feed(data, &mut |ev| match ev {
                        TermEvent::Input(s) => input.extend_from_slice(s),
                        TermEvent::Resize { cols, rows } => {
                            if !input.is_empty() {
                                cast.data(micros, CastDir::Input, &input, &mut out);
                                input.clear();
                            }
                            cast.resize(micros, cols, rows, &mut out);
                        }
                    });
                    if !input.is_empty() {
                        cast.data(micros, CastDir::Input, &input, &mut out);
                    }
                }
            },
            Enc::Vnc { skip } => {
                let dir = if up {
                    VncDir::FromBrowser
                } else {
                    VncDir::ToBrowser
                };
                match skip {
                    Some(s) => s.feed(dir, data, &mut |d, b| vnc_record(d, micros, b, &mut out)),
                    None => vnc_record(dir, micros, data, &mut out),
                }
            }
        }
        self.commit(out);
    }

    /// Buffers whole lines/records, up to `max_bytes`.
    fn commit(&mut self, out: Vec<u8>) {
        if out.is_empty() || self.truncated.is_some() {
            return;
        }
        if self.written + (self.buf.len() + out.len()) as u64 > self.max {
            self.truncated = Some("max_bytes");
            self.flush();
            return;
        }
        self.data = true;
        if self.buf.is_empty() && out.len() >= FLUSH_AT {
            self.buf = out;
        } else {
            self.buf.extend_from_slice(&out);
        }
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let Some(f) = self.file.as_mut() else {
            self.buf.clear();
            return;
        };
        match f.write_all(&self.buf) {
            Ok(()) => {
                self.sha.update(&self.buf);
                self.written += self.buf.len() as u64;
            }
            Err(e) => {
                // Keep the file to what was written whole (and hashed).
                let _ = f.set_len(self.written);
                self.truncated.get_or_insert("disk_error");
                self.error.get_or_insert_with(|| e.to_string());
            }
        }
        self.buf.clear();
        if self.buf.capacity() > 4 * FLUSH_AT {
            self.buf = Vec::with_capacity(FLUSH_AT);
        }
    }

    /// Ends the file. `abandoned` (the session never relayed): a file
    /// with nothing but its header is removed, and None comes back.
    fn close(mut self, micros: u64, queue_full: bool, abandoned: bool) -> Option<Summary> {
        if let Enc::Cast { cast, .. } = &mut self.enc {
            let mut out = Vec::new();
            cast.finish(micros, &mut out);
            self.commit(out);
        }
        self.flush();
        if let Enc::Vnc { skip: Some(s) } = &self.enc {
            if s.unparsed() {
                self.error
                    .get_or_insert_with(|| "rfb_handshake_unrecognised: recorded raw".into());
            }
        }
        if queue_full && self.truncated.is_none() {
            self.truncated = Some("queue_full");
        }
        let file = self.file.take();
        if abandoned && !self.data {
            drop(file);
            let _ = std::fs::remove_file(&self.part);
            return None;
        }
        if let Some(f) = file {
            if let Err(e) = f.sync_data() {
                self.error.get_or_insert_with(|| e.to_string());
            }
        }
        let file = match std::fs::rename(&self.part, &self.path) {
            Ok(()) => self.name.clone(),
            Err(e) => {
                self.error.get_or_insert_with(|| format!("rename: {e}"));
                format!("{}.part", self.name)
            }
        };
        let sha = self.sha.finalize();
        Some(Summary {
            file,
            sha256: Some(sha.iter().map(|b| format!("{b:02x}")).collect()),
            bytes: self.written,
            truncated: self.truncated,
            error: self.error,
        })
    }
}
