//! The TUI's state and what keys do to it. No I/O: keys, ticks and the
//! daemon's answers go in; `Effect`s (requests for the daemon) come out.
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

pub use super::{form::Form, selector::Selector};
use super::{
    form::{Outcome, MAX_INPUT},
    model::{Backend, Dir, Proc, Sample, Scope, Sort, Usage},
};
use crate::api::Failure;

/// How many processes the TUI asks for (the name filter works on these).
pub const COUNT: u32 = 500;

/// A request for the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Refresh {
        sort: Sort,
        scope: Scope,
    },
    History(u32),
    Usage,
    Backends,
    Limit {
        pid: u32,
        name: String,
        down: Option<u64>,
        up: Option<u64>,
    },
    Remove(u32),
    /// Blocks a process outright (a pid throttle).
    Block(u32),
    /// Moves a process's pid throttle to the next priority (making one).
    Priority(u32),
    SetDefault {
        dir: Dir,
        backend: String,
    },
}

/// The daemon's answer to an `Effect`.
#[derive(Debug)]
pub enum Reply {
    Top {
        sort: Sort,
        scope: Scope,
        result: Result<Vec<Proc>, Failure>,
    },
    History(u32, Result<Vec<Sample>, Failure>),
    Usage(Result<Vec<Usage>, Failure>),
    Backends(Result<Vec<Backend>, Failure>),
    /// A change was made (the text says which) or refused.
    Done(Result<String, Failure>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    pub pid: u32,
    pub name: String,
    pub samples: Vec<Sample>,
    pub error: Option<String>,
}

/// The usage view: the last 24 hours by name (`None`: not loaded yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageView {
    pub rows: Option<Vec<Usage>>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    List,
    Filter,
    Throttle(Form),
    Backends(Option<Selector>),
    Graph(Graph),
    Usage(UsageView),
    Help,
}

pub struct App {
    /// The latest sample, in the daemon's order.
    pub procs: Vec<Proc>,
    pub sort: Sort,
    pub scope: Scope,
    pub filter: String,
    pub selected: Option<u32>,
    /// Where the selection was, for when its process goes away.
    cursor: usize,
    pub mode: Mode,
    pub status: Option<(Level, String)>,
    /// Set while the daemon cannot be reached (the last error).
    pub lost: Option<String>,
    pub backends: Vec<Backend>,
    pub backends_error: Option<String>,
    /// The sort and scope of the newest unanswered refresh.
    asked: Option<(Sort, Scope)>,
    /// A history or backend list is asked for and not answered yet.
    loading: bool,
    /// The daemon has answered at least once since the last time it was lost.
    pub answered: bool,
    pub quit: bool,
}

impl App {
    pub fn new(sort: Sort, scope: Scope) -> App {
        App {
            procs: Vec::new(),
            sort,
            scope,
            filter: String::new(),
            selected: None,
            cursor: 0,
            mode: Mode::List,
            status: None,
            lost: None,
            backends: Vec::new(),
            backends_error: None,
            asked: None,
            loading: false,
            answered: false,
            quit: false,
        }
    }

    /// The rows the list shows: the sample, filtered by name.
    pub fn visible(&self) -> Vec<&Proc> {
        let f = self.filter.to_lowercase();
        self.procs.iter().filter(|p| f.is_empty() || p.name.to_lowercase().contains(&f)).collect()
    }

    /// Index of the selection among `visible()`.
    pub fn selected_index(&self) -> Option<usize> {
        let sel = self.selected?;
        self.visible().iter().position(|p| p.pid == sel)
    }

    fn selected_proc(&self) -> Option<&Proc> {
        let sel = self.selected?;
        self.procs.iter().find(|p| p.pid == sel)
    }

    fn info(&mut self, text: impl Into<String>) {
        self.status = Some((Level::Info, text.into()));
    }

    fn error(&mut self, text: impl Into<String>) {
        self.status = Some((Level::Error, text.into()));
    }

    /// Once a second: the sample, and whatever the open view shows.
    pub fn tick(&mut self) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.asked.is_none() {
            out.push(self.refresh());
        }
        if !self.loading {
            out.extend(self.load());
        }
        out
    }

    /// What the open dialog shows, if it comes from the daemon.
    fn load(&mut self) -> Option<Effect> {
        let e = match &self.mode {
            Mode::Graph(g) => Effect::History(g.pid),
            Mode::Usage(_) => Effect::Usage,
            Mode::Backends(_) => Effect::Backends,
            _ => return None,
        };
        self.loading = true;
        Some(e)
    }

    fn refresh(&mut self) -> Effect {
        self.asked = Some((self.sort, self.scope));
        Effect::Refresh { sort: self.sort, scope: self.scope }
    }

    /// Keeps the selection on the same process, or near where it was.
    fn sync_selection(&mut self) {
        let vis: Vec<u32> = self.visible().iter().map(|p| p.pid).collect();
        if let Some(i) = self.selected.and_then(|s| vis.iter().position(|&p| p == s)) {
            self.cursor = i;
            return;
        }
        self.cursor = self.cursor.min(vis.len().saturating_sub(1));
        self.selected = vis.get(self.cursor).copied();
    }

    fn move_by(&mut self, delta: isize) {
        let n = self.visible().len();
        if n == 0 {
            return;
        }
        let at = self.selected_index().unwrap_or(self.cursor.min(n - 1));
        let to = at.saturating_add_signed(delta).min(n - 1);
        self.cursor = to;
        self.selected = self.visible().get(to).map(|p| p.pid);
    }

    pub fn key(&mut self, k: KeyEvent) -> Vec<Effect> {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            self.quit = true;
            return Vec::new();
        }
        match self.mode {
            Mode::List => self.key_list(k),
            Mode::Filter => {
                self.key_filter(k);
                Vec::new()
            }
            Mode::Throttle(_) => self.key_form(k),
            Mode::Backends(_) => self.key_backends(k),
            Mode::Graph(_) => {
                if matches!(k.code, KeyCode::Esc | KeyCode::Char('q' | 'g') | KeyCode::Enter) {
                    self.mode = Mode::List;
                }
                Vec::new()
            }
            Mode::Usage(_) => {
                if matches!(k.code, KeyCode::Esc | KeyCode::Char('q' | 'u') | KeyCode::Enter) {
                    self.mode = Mode::List;
                }
                Vec::new()
            }
            Mode::Help => {
                self.mode = Mode::List;
                Vec::new()
            }
        }
    }

    fn key_list(&mut self, k: KeyEvent) -> Vec<Effect> {
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::PageUp => self.move_by(-10),
            KeyCode::PageDown => self.move_by(10),
            KeyCode::Home => self.move_by(isize::MIN),
            KeyCode::End => self.move_by(isize::MAX),
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.info(format!("sorted by {}", self.sort.as_str()));
                return vec![self.refresh()];
            }
            KeyCode::Char('v') => {
                self.scope = self.scope.next();
                self.info(format!("showing {} traffic", self.scope.as_str()));
                return vec![self.refresh()];
            }
            KeyCode::Char('/') => self.mode = Mode::Filter,
            KeyCode::Esc if !self.filter.is_empty() => self.set_filter(String::new()),
            KeyCode::Char('t') => self.open_form(),
            KeyCode::Char('r') => return self.remove(),
            KeyCode::Char('x') => return self.on_selected("blocking", Effect::Block),
            KeyCode::Char('p') => return self.on_selected("changing the priority of", Effect::Priority),
            KeyCode::Char('g') => return self.open_graph(),
            KeyCode::Char('u') => {
                self.mode = Mode::Usage(UsageView::default());
                return self.load().into_iter().collect();
            }
            KeyCode::Char('b') => {
                self.mode = Mode::Backends(None);
                return self.load().into_iter().collect();
            }
            KeyCode::Char('?') => self.mode = Mode::Help,
            _ => {}
        }
        Vec::new()
    }

    /// A selection the filter hides moves to the top row.
    fn set_filter(&mut self, f: String) {
        self.filter = f;
        self.cursor = 0;
        self.sync_selection();
    }

    fn key_filter(&mut self, k: KeyEvent) {
        let mut f = self.filter.clone();
        match k.code {
            KeyCode::Enter => self.mode = Mode::List,
            KeyCode::Esc => {
                f.clear();
                self.mode = Mode::List;
            }
            KeyCode::Backspace => {
                f.pop();
            }
            KeyCode::Char(c) if f.chars().count() < MAX_INPUT => f.push(c),
            _ => {}
        }
        self.set_filter(f);
    }

    fn no_selection(&mut self) -> bool {
        let none = self.selected_proc().is_none();
        if none {
            self.error("no process selected");
        }
        none
    }

    fn open_form(&mut self) {
        if let Some(p) = self.selected_proc() {
            self.mode = Mode::Throttle(Form::new(p));
        } else {
            self.error("no process selected");
        }
    }

    /// `effect` on the selected process, saying `what` is happening.
    fn on_selected(&mut self, what: &str, effect: fn(u32) -> Effect) -> Vec<Effect> {
        if self.no_selection() {
            return Vec::new();
        }
        let pid = self.selected.unwrap_or_default();
        self.info(format!("{what} pid {pid}…"));
        vec![effect(pid)]
    }

    fn remove(&mut self) -> Vec<Effect> {
        if self.no_selection() {
            return Vec::new();
        }
        let pid = self.selected.unwrap_or_default();
        self.info(format!("removing the throttle of pid {pid}…"));
        vec![Effect::Remove(pid)]
    }

    fn open_graph(&mut self) -> Vec<Effect> {
        if self.no_selection() {
            return Vec::new();
        }
        let p = self.selected_proc().cloned().unwrap_or_default();
        self.mode = Mode::Graph(Graph { pid: p.pid, name: p.name, samples: Vec::new(), error: None });
        self.load().into_iter().collect()
    }

    fn key_form(&mut self, k: KeyEvent) -> Vec<Effect> {
        let Mode::Throttle(form) = &mut self.mode else { return Vec::new() };
        let (pid, name) = (form.pid, form.name.clone());
        match form.key(k.code) {
            Outcome::Open => Vec::new(),
            Outcome::Cancel => {
                self.mode = Mode::List;
                self.info("cancelled");
                Vec::new()
            }
            Outcome::Submit(down, up) => {
                self.mode = Mode::List;
                self.info(format!("limiting pid {pid} ({name})…"));
                vec![Effect::Limit { pid, name, down, up }]
            }
        }
    }

    fn key_backends(&mut self, k: KeyEvent) -> Vec<Effect> {
        let Mode::Backends(sel) = &mut self.mode else { return Vec::new() };
        let bs = &self.backends;
        match (sel, k.code) {
            (None, KeyCode::Esc | KeyCode::Char('q' | 'b')) => self.mode = Mode::List,
            (None, KeyCode::Enter) => self.mode = Mode::Backends(Some(Selector::new(bs, Dir::Up))),
            (Some(_), KeyCode::Esc | KeyCode::Char('q')) => self.mode = Mode::Backends(None),
            (Some(s), KeyCode::Tab | KeyCode::BackTab) => *s = Selector::new(bs, s.dir.other()),
            (Some(s), KeyCode::Up | KeyCode::Char('k')) => s.step(bs, -1),
            (Some(s), KeyCode::Down | KeyCode::Char('j')) => s.step(bs, 1),
            (Some(s), KeyCode::Enter) => {
                let s = s.clone();
                return self.choose(s);
            }
            _ => {}
        }
        Vec::new()
    }

    fn choose(&mut self, s: Selector) -> Vec<Effect> {
        let Some(b) = s.chosen(&self.backends) else {
            self.error(format!("no backend can do {}", s.dir.word()));
            return Vec::new();
        };
        let backend = b.name.clone();
        self.mode = Mode::Backends(None);
        self.info(format!("setting the {} default to '{backend}'…", s.dir.word()));
        vec![Effect::SetDefault { dir: s.dir, backend }]
    }

    pub fn apply(&mut self, r: Reply) -> Vec<Effect> {
        match r {
            Reply::Top { sort, scope, result } => self.apply_top(sort, scope, result),
            Reply::History(pid, r) => self.apply_history(pid, r),
            Reply::Usage(r) => self.apply_usage(r),
            Reply::Backends(r) => self.apply_backends(r),
            Reply::Done(r) => return self.apply_done(r),
        }
        Vec::new()
    }

    fn apply_top(&mut self, sort: Sort, scope: Scope, r: Result<Vec<Proc>, Failure>) {
        if self.asked == Some((sort, scope)) {
            self.asked = None;
        }
        match r {
            // An answer for an older sort or scope is stale.
            Ok(procs) if (sort, scope) == (self.sort, self.scope) => {
                self.procs = procs;
                self.sync_selection();
                self.found();
            }
            Ok(_) => self.found(),
            Err(f) => self.failed(f),
        }
    }

    fn found(&mut self) {
        self.answered = true;
        if self.lost.take().is_some() {
            self.info("connected to chadthrottled");
        }
    }

    fn failed(&mut self, f: Failure) {
        if f.code() == 5 {
            self.answered = false;
            self.lost = Some(f.to_string());
        } else {
            self.error(f.to_string());
        }
    }

    fn apply_usage(&mut self, r: Result<Vec<Usage>, Failure>) {
        self.loading = false;
        let Mode::Usage(u) = &mut self.mode else { return };
        match r {
            Ok(rows) => (u.rows, u.error) = (Some(rows), None),
            Err(f) => u.error = Some(f.to_string()),
        }
    }

    fn apply_history(&mut self, pid: u32, r: Result<Vec<Sample>, Failure>) {
        self.loading = false;
        let Mode::Graph(g) = &mut self.mode else { return };
        if g.pid != pid {
            return;
        }
        match r {
            Ok(s) => (g.samples, g.error) = (s, None),
            Err(f) => g.error = Some(f.to_string()),
        }
    }

    fn apply_backends(&mut self, r: Result<Vec<Backend>, Failure>) {
        self.loading = false;
        match r {
            Ok(b) => (self.backends, self.backends_error) = (b, None),
            Err(f) => self.backends_error = Some(f.to_string()),
        }
        // The list may have changed under the cursor.
        if let Mode::Backends(Some(s)) = &mut self.mode {
            s.revalidate(&self.backends);
        }
    }

    fn apply_done(&mut self, r: Result<String, Failure>) -> Vec<Effect> {
        match r {
            Ok(text) => self.info(text),
            Err(f) => self.failed(f),
        }
        let mut out = Vec::new();
        if self.asked.is_none() {
            out.push(self.refresh());
        }
        if matches!(self.mode, Mode::Backends(_)) {
            out.extend(self.load());
        }
        out
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
