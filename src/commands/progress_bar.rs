//! A progress bar on stderr for passes long enough to want one, only in a terminal.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::sync::Progress;

pub struct Bar {
    bar: ProgressBar,
    ticker: JoinHandle<()>,
}

pub fn start(progress: Arc<Progress>) -> Option<Bar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} missing users handled, {msg} created  {per_sec}  ETA {eta}",
        )
        .expect("a valid template"),
    );
    let ticker_bar = bar.clone();
    let ticker = tokio::spawn(async move {
        // Nothing for the first second: short passes stay quiet.
        tokio::time::sleep(Duration::from_secs(1)).await;
        loop {
            let total = progress.total.load(Ordering::Relaxed);
            let done = progress.done.load(Ordering::Relaxed);
            ticker_bar.set_length(total.max(done));
            ticker_bar.set_position(done);
            ticker_bar.set_message(progress.created.load(Ordering::Relaxed).to_string());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Some(Bar { bar, ticker })
}

pub async fn finish(bar: Option<Bar>) {
    if let Some(Bar { bar, ticker }) = bar {
        ticker.abort();
        let _ = ticker.await;
        bar.finish_and_clear();
    }
}
