//! [`WokenOnly`]: a source of the call loop that is polled only when it has something.
//!
//! The call's `select!` polls its branches in order at every turn of the loop, and most
//! wake-ups (a paced burst, a TTS or agent event) are not the client's socket; yet polling the
//! socket that has nothing goes down the WebSocket stack to the TCP registration and touches a
//! dozen cache lines of a call that has been asleep. `WokenOnly` polls its source with a waker
//! of its own, which records that the source woke the task before waking it: until then the
//! source is not polled again (it registered that waker when it returned `Pending`, as every
//! future must). After an item it is polled again at the next turn (it may hold more).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::Stream;
use futures::task::AtomicWaker;

/// The source's waker: sets `woken`, then wakes the task.
#[derive(Default)]
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// See the module docs. For a source that stays the same for the whole loop (the client's
/// socket, the shutdown signal): one that is replaced must be polled once as new.
pub(super) struct WokenOnly<S> {
    inner: S,
    flag: Arc<Flag>,
    waker: Waker,
}

impl<S: Unpin> WokenOnly<S> {
    pub fn new(inner: S) -> Self {
        let flag = Arc::new(Flag::default());
        // Polled the first time.
        flag.woken.store(true, Ordering::Relaxed);
        Self {
            inner,
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// Polls `inner` with the source's waker if it woke (or had an item) since its last poll.
    fn poll_with<T>(
        &mut self,
        cx: &Context<'_>,
        poll: impl FnOnce(&mut S, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // The task's waker first: a wake between the check and the poll is not lost.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        self.flag.woken.store(false, Ordering::Release);
        let result = poll(&mut self.inner, &mut Context::from_waker(&self.waker));
        if result.is_ready() {
            self.flag.woken.store(true, Ordering::Release);
        }
        result
    }
}

impl<S: Stream + Unpin> Stream for WokenOnly<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.poll_with(cx, |s, cx| Pin::new(s).poll_next(cx))
    }
}

impl<F: Future + Unpin> Future for WokenOnly<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.poll_with(cx, |f, cx| Pin::new(f).poll(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::AtomicUsize;

    /// A stream that counts its polls and yields what was pushed into its channel.
    struct Counted {
        rx: tokio::sync::mpsc::UnboundedReceiver<u32>,
        polls: Arc<AtomicUsize>,
    }

    impl Stream for Counted {
        type Item = u32;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.rx.poll_recv(cx)
        }
    }

    fn counted() -> (
        WokenOnly<Counted>,
        tokio::sync::mpsc::UnboundedSender<u32>,
        Arc<AtomicUsize>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let polls = Arc::new(AtomicUsize::new(0));
        let stream = Counted {
            rx,
            polls: polls.clone(),
        };
        (WokenOnly::new(stream), tx, polls)
    }

    #[test]
    fn a_source_that_did_not_wake_is_not_polled_again() {
        let (mut s, tx, polls) = counted();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(s.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // Nothing came: the next turns of the loop do not reach the source.
        for _ in 0..5 {
            assert!(s.poll_next_unpin(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // An item wakes it: polled, and polled again after the item (it may hold more).
        tx.send(7).unwrap();
        tx.send(8).unwrap();
        assert_eq!(s.poll_next_unpin(&mut cx), Poll::Ready(Some(7)));
        assert_eq!(s.poll_next_unpin(&mut cx), Poll::Ready(Some(8)));
        assert!(s.poll_next_unpin(&mut cx).is_pending());
        assert!(s.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn the_task_is_woken_when_the_source_is() {
        let (mut s, tx, _) = counted();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(v) = s.next().await {
                got.push(v);
            }
            got
        });
        for v in 0..100 {
            tx.send(v).unwrap();
            if v % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(tx);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("the reader was woken")
            .unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_future_is_polled_when_it_wakes() {
        let token = tokio_util::sync::CancellationToken::new();
        let cancelled = token.clone().cancelled_owned();
        let waiter = tokio::spawn(async move {
            let mut f = WokenOnly::new(Box::pin(cancelled));
            (&mut f).await;
        });
        tokio::task::yield_now().await;
        token.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter was woken")
            .unwrap();
    }
}
