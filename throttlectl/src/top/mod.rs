//! `throttlectl top`: a full-screen view of processes by bandwidth, a
//! D-Bus client only. The event loop feeds keys, ticks and the daemon's
//! answers to the pure `state::App`; a worker talks to the daemon.
mod columns;
mod form;
pub mod human;
mod model;
mod once;
mod popup;
mod selector;
mod source;
mod state;
mod term;
mod view;
mod worker;

use std::{io::IsTerminal as _, time::Duration};

use crossterm::event::{Event, EventStream, KeyEventKind};
use futures_util::StreamExt as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    time::MissedTickBehavior,
};

pub use self::model::{Scope, Sort};
use self::{
    source::{Dbus, Source},
    state::{App, Effect, Reply},
    term::Term,
};
use crate::{
    api::{Client, Failure},
    output::Style,
};

pub struct Options {
    pub once: bool,
    pub count: u32,
    pub sort: Sort,
    pub scope: Scope,
    pub style: Style,
    /// Every D-Bus call's limit (`--timeout`).
    pub timeout: Duration,
}

pub async fn run(bus: &str, o: Options) -> Result<(), Failure> {
    if o.once {
        let c = Client::connect(bus, o.timeout).await?;
        let dicts = c.manager.get_top_processes(o.count, o.sort.as_str(), o.scope.as_str()).await?;
        once::print(&dicts.iter().map(source::proc_of).collect::<Vec<_>>(), &o.style);
        return Ok(());
    }
    if o.style.json {
        return Err(Failure::usage("--json needs --once"));
    }
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(Failure::usage("top needs a terminal; for scripts use: throttlectl top --once [--json]"));
    }
    let (mut term, _restore) = term::enter().map_err(Failure::other)?;
    event_loop(&mut term, App::new(o.sort, o.scope), Dbus::new(bus, o.timeout)).await
}

/// The screen and the worker run side by side in this task.
async fn event_loop<S: Source>(term: &mut Term, app: App, src: S) -> Result<(), Failure> {
    let (effects, todo) = mpsc::unbounded_channel();
    let (replies, answers) = mpsc::unbounded_channel();
    tokio::select! {
        r = ui(term, app, effects, answers) => r,
        () = worker::serve(src, todo, replies) => Ok(()),
    }
}

async fn ui(
    term: &mut Term,
    mut app: App,
    effects: mpsc::UnboundedSender<Effect>,
    mut answers: mpsc::UnboundedReceiver<Reply>,
) -> Result<(), Failure> {
    let mut events = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut term_sig = signal(SignalKind::terminate()).map_err(Failure::other)?;
    let mut hup = signal(SignalKind::hangup()).map_err(Failure::other)?;
    while !app.quit {
        term.draw(|f| view::draw(f, &app)).map_err(Failure::other)?;
        let todo = tokio::select! {
            _ = tick.tick() => app.tick(),
            Some(r) = answers.recv() => app.apply(r),
            ev = events.next() => match ev {
                Some(Ok(Event::Key(k))) if k.kind != KeyEventKind::Release => app.key(k),
                Some(Ok(_)) => Vec::new(),
                Some(Err(e)) => return Err(Failure::other(e)),
                None => return Ok(()),
            },
            _ = term_sig.recv() => return Ok(()),
            _ = hup.recv() => return Ok(()),
        };
        for e in todo {
            // The worker only stops when this loop does.
            let _ = effects.send(e);
        }
    }
    Ok(())
}
