//! The panic net for session tasks.
//!
//! monoio polls every task on its worker thread and catches no panic
//! (monoio 0.2.4 `task/harness.rs`, `poll_future`), so one panicking task
//! would unwind the whole runtime and every session on it. Every task of a
//! session must therefore be started with [`spawn`], not `monoio::spawn`:
//! its [`CatchPanic`] net ends only that task, counts it
//! (`nexor_session_panics_total`) and logs where it happened; the worker
//! goes on. [`install_panic_hook`] keeps panic messages (which can hold
//! data) out of the logs.

use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::log::{self, V};
use crate::metrics::Metrics;

thread_local! {
    /// This worker's counters, for [`spawn`]'s net (unset off the workers).
    static WORKER: std::cell::RefCell<Option<(Arc<Metrics>, usize)>> =
        const { std::cell::RefCell::new(None) };
    /// How many [`CatchPanic`] polls are running on this thread; inside
    /// one, the panic hook leaves the log line to the net.
    static CATCHING: Cell<u32> = const { Cell::new(0) };
    /// Where the last panic on this thread happened (set by the hook).
    static LAST_PANIC: Cell<Option<String>> = const { Cell::new(None) };
}

/// Installs the process's panic hook, in place of Rust's default one.
///
/// The default hook prints the panic *message*, and a message can hold
/// data: `unwrap()` on an error prints the error's `Debug`, a bad string
/// slice prints the whole string (a request head, a ticket, a token).
/// Secrets must never reach a log line, so this hook prints only the
/// thread's name and the source location (`file:line:column`), never the
/// message, as one JSON log line. Inside a [`CatchPanic`] it prints
/// nothing and leaves the location to the net, which logs one line for
/// the session it ended. `RUST_BACKTRACE` has no effect here.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "unknown".into());
        let caught = CATCHING.try_with(|c| c.get() > 0).unwrap_or(false);
        if caught && LAST_PANIC.try_with(|l| l.set(Some(at.clone()))).is_ok() {
            return;
        }
        let thread = std::thread::current();
        log::error(
            "panic",
            &[
                ("thread", V::S(thread.name().unwrap_or("unnamed"))),
                ("location", V::S(&at)),
            ],
        );
        // The thread (maybe the process) ends next: let the line out first.
        log::flush(Duration::from_secs(1));
    }));
}

/// A caught panic: where it happened, when the hook of
/// [`install_panic_hook`] saw it. The message is dropped unread.
#[derive(Debug)]
pub struct Panicked {
    pub location: Option<String>,
}

/// Polls a future inside `catch_unwind`: a panic ends this future (it is
/// dropped at once, its own drop panics caught too) and resolves to
/// `Err(Panicked)`; the task polling it, and the thread, go on.
///
/// A panic may leave the state the future shared (an `Rc<RefCell<_>>`)
/// half-updated; what is shared by one session's tasks belongs to that
/// session alone, and the other tasks of a session see its sockets close.
pub struct CatchPanic<F: Future> {
    inner: Option<Pin<Box<F>>>,
}

impl<F: Future> CatchPanic<F> {
    pub fn new(fut: F) -> Self {
        CatchPanic {
            inner: Some(Box::pin(fut)),
        }
    }
}

struct Catching;

impl Catching {
    fn enter() -> Catching {
        let outer = CATCHING.with(|c| c.replace(c.get() + 1)) == 0;
        if outer {
            // A location an inner catch left untaken is not this poll's.
            LAST_PANIC.with(|l| l.take());
        }
        Catching
    }
}

/// Where the panic just caught on this thread happened (`file:line:col`),
/// taken: for code that catches a panic itself inside a task started with
/// [`spawn`] (the hook stays quiet there) and logs its own line.
pub fn take_panic_location() -> Option<String> {
    LAST_PANIC.try_with(|l| l.take()).ok().flatten()
}

impl Drop for Catching {
    fn drop(&mut self) {
        let _ = CATCHING.try_with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// Drops a value, catching a panic in its `Drop`.
fn drop_caught<T>(v: T) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(v)));
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(fut) = this.inner.as_mut() else {
            return Poll::Pending; // done already: never polled again
        };
        let _catching = Catching::enter();
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => {
                this.inner = None;
                Poll::Ready(Ok(v))
            }
            Err(payload) => {
                drop_caught(this.inner.take());
                drop_caught(payload);
                let location = take_panic_location();
                Poll::Ready(Err(Panicked { location }))
            }
        }
    }
}

impl<F: Future> Drop for CatchPanic<F> {
    fn drop(&mut self) {
        if let Some(f) = self.inner.take() {
            let _catching = Catching::enter();
            drop_caught(f);
        }
    }
}

/// Counts and logs a task's panic on this thread's worker.
fn report(p: &Panicked) {
    let worker = WORKER
        .try_with(|w| {
            w.borrow().as_ref().map(|(m, id)| {
                m.worker(*id).session_panic();
                *id
            })
        })
        .ok()
        .flatten();
    let mut fields = vec![("location", V::S(p.location.as_deref().unwrap_or("unknown")))];
    if let Some(id) = worker {
        fields.push(("worker", V::N(id as u64)));
    }
    log::error(
        "session task panicked: that task ended, the worker goes on",
        &fields,
    );
}

/// `monoio::spawn` behind the panic net: use it for every task of a
/// session (the handshake, the relay phase, pumps, demo backends). A
/// panic in the task is counted on this worker
/// (`nexor_session_panics_total`), logged with its location only, and
/// ends that task alone; the task's sockets close as it is dropped.
pub fn spawn<F>(fut: F) -> monoio::task::JoinHandle<()>
where
    F: Future<Output = ()> + 'static,
{
    // Boxed here, before the spawn: a future moved into the net inside
    // the task would be held twice, once in the task and once in the box.
    let caught = CatchPanic::new(fut);
    monoio::spawn(async move {
        if let Err(p) = caught.await {
            report(&p);
        }
    })
}

/// Marks this thread as worker `id`: [`spawn`]'s net counts its panics there.
pub fn enter_worker(metrics: Arc<Metrics>, id: usize) {
    WORKER.with(|w| *w.borrow_mut() = Some((metrics, id)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
    }

    #[test]
    fn a_panicking_task_ends_alone_and_is_counted() {
        let metrics = Arc::new(Metrics::new(2));
        let m = metrics.clone();
        // A thread of its own, like a worker (the context is thread-local).
        let healthy_done = std::thread::spawn(move || {
            WORKER.with(|w| *w.borrow_mut() = Some((m, 1)));
            let done = Rc::new(RefCell::new(Vec::new()));
            let d = done.clone();
            runtime().block_on(async move {
                let healthy = spawn({
                    let d = d.clone();
                    async move {
                        for i in 0..5u32 {
                            monoio::time::sleep(Duration::from_millis(5)).await;
                            d.borrow_mut().push(i);
                        }
                    }
                });
                let bad = spawn(async {
                    monoio::time::sleep(Duration::from_millis(7)).await;
                    let v: Vec<u8> = Vec::new();
                    let i = v.len() + 3;
                    let _ = v[i]; // panics: index out of bounds
                });
                // Panics in a future's drop are caught too.
                struct Boom;
                impl Drop for Boom {
                    fn drop(&mut self) {
                        panic!("drop");
                    }
                }
                let bad_drop = spawn(async {
                    let _b = Boom;
                    monoio::time::sleep(Duration::from_millis(3)).await;
                });
                bad.await;
                bad_drop.await;
                healthy.await;
            });
            let v = done.borrow().clone();
            v
        })
        .join()
        .expect("the worker thread survives");
        assert_eq!(healthy_done, vec![0, 1, 2, 3, 4]);
        assert_eq!(metrics.worker(1).panics.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.worker(0).panics.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn catch_panic_gives_the_output_or_the_panic() {
        runtime().block_on(async {
            assert_eq!(CatchPanic::new(async { 7 }).await.unwrap(), 7);
            let r = CatchPanic::new(async {
                if Instant::now().elapsed() < Duration::from_secs(3600) {
                    panic!("x");
                }
                7
            })
            .await;
            assert!(r.is_err());
        });
    }
}
