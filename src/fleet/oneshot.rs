//! A value sent once from a plain thread (the fleet store's) to a monoio
//! task, which awaits it: the sender stores it and wakes the task's waker
//! from its own thread (monoio's wakers may be woken from any thread). A
//! plain thread can wait for it too ([`Oneshot::wait`]). A value delivered
//! after the receiver was dropped is handed back to the sender; one
//! delivered but dropped untaken goes to the receiver's orphan handler.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    /// The receiver is gone: a late value is handed back to the sender.
    closed: bool,
    /// Called with a value that arrived but was never taken (the receiver
    /// dropped in between).
    orphan: Option<Orphan<T>>,
}

/// What to do with a value that was delivered but never taken.
pub type Orphan<T> = Box<dyn FnOnce(T) + Send>;

/// A value sent once from the store thread to a worker (or the admin
/// thread, which waits with [`Oneshot::wait`]).
pub struct Oneshot<T> {
    slot: Arc<(Mutex<Slot<T>>, Condvar)>,
}

/// The sending half.
pub struct Sender<T> {
    slot: Arc<(Mutex<Slot<T>>, Condvar)>,
}

pub fn oneshot<T>() -> (Sender<T>, Oneshot<T>) {
    let slot = Arc::new((
        Mutex::new(Slot {
            value: None,
            waker: None,
            closed: false,
            orphan: None,
        }),
        Condvar::new(),
    ));
    (Sender { slot: slot.clone() }, Oneshot { slot })
}

impl<T> Sender<T> {
    /// Delivers `v`; gives it back if the receiver was dropped.
    pub fn send(self, v: T) -> Result<(), T> {
        let mut g = lock(&self.slot.0);
        if g.closed {
            return Err(v);
        }
        g.value = Some(v);
        let w = g.waker.take();
        drop(g);
        self.slot.1.notify_all();
        if let Some(w) = w {
            w.wake();
        }
        Ok(())
    }
}

impl<T> Oneshot<T> {
    /// Blocks (a plain thread, never a worker) for at most `timeout`.
    pub fn wait(self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.slot.0);
        loop {
            if let Some(v) = g.value.take() {
                return Some(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            g = self
                .slot
                .1
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl<T> Future for Oneshot<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut g = lock(&self.slot.0);
        match g.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                g.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Oneshot<T> {
    /// What to do with a value delivered but never taken.
    pub fn on_orphan(&self, f: Orphan<T>) {
        lock(&self.slot.0).orphan = Some(f);
    }
}

impl<T> Drop for Oneshot<T> {
    fn drop(&mut self) {
        let mut g = lock(&self.slot.0);
        g.closed = true;
        let left = g.value.take().zip(g.orphan.take());
        drop(g);
        if let Some((v, f)) = left {
            f(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delivered_waited_handed_back_or_orphaned() {
        let (tx, rx) = oneshot();
        std::thread::spawn(move || tx.send(7u32).unwrap());
        assert_eq!(rx.wait(Duration::from_secs(5)), Some(7));
        // Receiver gone first: the value comes back to the sender.
        let (tx, rx) = oneshot::<u32>();
        drop(rx);
        assert_eq!(tx.send(8), Err(8));
        // Delivered, then dropped untaken: the orphan handler gets it.
        let got = Arc::new(AtomicU32::new(0));
        let (tx, rx) = oneshot::<u32>();
        let g = got.clone();
        rx.on_orphan(Box::new(move |v| g.store(v, Ordering::Relaxed)));
        tx.send(9).unwrap();
        drop(rx);
        assert_eq!(got.load(Ordering::Relaxed), 9);
        // Nothing sent: waiting times out.
        let (_tx, rx) = oneshot::<u32>();
        assert_eq!(rx.wait(Duration::from_millis(10)), None);
    }

    #[test]
    fn a_task_is_woken_from_another_thread() {
        let (tx, rx) = oneshot();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let v = rt.block_on(async move {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                tx.send("done").unwrap();
            });
            rx.await
        });
        assert_eq!(v, "done");
    }
}
