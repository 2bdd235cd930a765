//! The dialogs drawn over the list: throttle, backends, graph, help.
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap},
    Frame,
};

use super::{
    human,
    model::{Backend, Dir},
    state::{App, Form, Graph, Mode, Selector, UsageView},
};

/// Keys and what they do, for the help dialog (and README).
pub const KEYS: &[(&str, &str)] = &[
    ("↑↓ j k PgUp PgDn", "move the selection"),
    ("s", "sort: total → down → up"),
    ("v", "scope: All → Internet → Local"),
    ("/", "filter by name (Enter keeps, Esc clears)"),
    ("t", "throttle the selected process"),
    ("r", "remove its pid throttle"),
    ("x", "block the selected process"),
    ("p", "next priority (high, critical, low...)"),
    ("g", "bandwidth graph of the selected process"),
    ("b", "backends; Enter picks a default"),
    ("u", "usage: bytes by name, last 24 hours"),
    ("?", "this help"),
    ("Esc", "close a dialog, clear the filter"),
    ("q Ctrl-C", "quit"),
];

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    match &app.mode {
        Mode::Throttle(form) => throttle(f, form, area),
        Mode::Backends(sel) => backends(f, app, sel.as_ref(), area),
        Mode::Graph(g) => graph(f, g, area),
        Mode::Usage(u) => usage(f, u, area),
        Mode::Help => help(f, area),
        Mode::List | Mode::Filter => {}
    }
}

/// A bordered box of at most w x h, centered; returns its inside.
fn boxed(f: &mut Frame, title: String, w: u16, h: u16, area: Rect) -> Rect {
    let (w, h) = (w.min(area.width), h.min(area.height));
    let r = Rect::new(area.x + (area.width - w) / 2, area.y + (area.height - h) / 2, w, h);
    let block = Block::bordered().title(title);
    let inner = block.inner(r);
    f.render_widget(Clear, r);
    f.render_widget(block, r);
    inner
}

fn throttle(f: &mut Frame, form: &Form, area: Rect) {
    let inner = boxed(f, format!(" Throttle pid {} ({}) ", form.pid, form.name), 60, 9, area);
    let field = |label: &str, text: &str, on: bool| {
        let style = if on { Style::new().add_modifier(Modifier::REVERSED) } else { Style::new() };
        let cursor = if on { "▏" } else { "" };
        Line::from(vec![Span::raw(format!("{label:<10}")), Span::styled(format!("{text}{cursor}"), style)])
    };
    let mut lines = vec![
        field("Download:", &form.down, !form.on_up),
        field("Upload:", &form.up, form.on_up),
        Line::from(format!("now: down {} up {}", human::limit(form.current.0), human::limit(form.current.1))),
        Line::from(hint(form.current)).fg(Color::DarkGray),
        Line::from("Enter apply  Tab other field  Esc cancel").fg(Color::DarkGray),
    ];
    if let Some(e) = &form.error {
        lines.push(Line::from(e.clone()).fg(Color::Red));
    }
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
}

/// A limit the process has stays when its field is left empty (the
/// daemon changes a throttle in place).
fn hint(current: (u64, u64)) -> &'static str {
    if current == (0, 0) {
        "e.g. 512K, 1.5M, 10mbit; empty = no limit"
    } else {
        "e.g. 512K, 1.5M, 10mbit; empty = unchanged (r removes)"
    }
}

fn backends(f: &mut Frame, app: &App, sel: Option<&Selector>, area: Rect) {
    let title = match sel {
        None => " Backends ".to_string(),
        Some(s) => format!(" Default for {} (Tab: {}) ", s.dir.word(), s.dir.other().word()),
    };
    let h = u16::try_from(app.backends.len()).unwrap_or(u16::MAX).saturating_add(5);
    let inner = boxed(f, title, 96, h, area);
    let [table_area, foot] = Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(inner);
    let foot_text = match (&app.backends_error, sel) {
        (Some(e), _) => Line::from(e.clone()).fg(Color::Red),
        (None, None) => Line::from("Enter choose a default  Esc close").fg(Color::DarkGray),
        (None, Some(_)) => Line::from("↑↓ choose  Enter set (new throttles only)  Esc back").fg(Color::DarkGray),
    };
    f.render_widget(Paragraph::new(foot_text), foot);
    let widths = [2, 4, 10, 10, 9, 6].map(Constraint::Length);
    let widths = widths.into_iter().chain([Constraint::Fill(1)]);
    let header = Row::new(["UP", "DOWN", "BACKEND", "DIRECTIONS", "PRIORITY", "ACTIVE", "AVAILABILITY"]).bold();
    let rows = app.backends.iter().map(|b| backend_row(b, sel.map(|s| s.dir)));
    let table =
        Table::new(rows, widths).header(header).row_highlight_style(Style::new().reversed()).highlight_symbol("> ");
    let mut state = TableState::default().with_selected(sel.and_then(|s| s.cursor));
    f.render_stateful_widget(table, table_area, &mut state);
}

fn backend_row(b: &Backend, choosing: Option<Dir>) -> Row<'static> {
    let star = |d| if b.is_default(d) { "⭐" } else { "" };
    let avail = match choosing.filter(|d| !b.directions.iter().any(|x| x == d.as_str())) {
        Some(d) => format!("✗ cannot do {}", d.word()),
        None if b.available => "✅".to_string(),
        None => format!("❌ {}", b.reason),
    };
    let row = Row::new(vec![
        Cell::from(star(Dir::Up)),
        Cell::from(star(Dir::Down)),
        Cell::from(b.name.clone()),
        Cell::from(b.directions.join("+")),
        Cell::from(b.priority.clone()),
        Cell::from(Line::from(b.active.to_string()).right_aligned()),
        Cell::from(avail),
    ]);
    // What cannot be chosen is greyed out; the text says why.
    match choosing.and_then(|d| b.why_not(d)) {
        Some(_) => row.fg(Color::DarkGray),
        None => row,
    }
}

fn graph(f: &mut Frame, g: &Graph, area: Rect) {
    let title = format!(" pid {} ({}), last {} s ", g.pid, g.name, g.samples.len());
    let inner = boxed(f, title, 100, 16, area.inner(ratatui::layout::Margin::new(1, 0)));
    let message = match (&g.error, g.samples.is_empty()) {
        (Some(e), _) => Some(e.clone()),
        (None, true) => Some("no history yet".to_string()),
        _ => None,
    };
    if let Some(m) = message {
        f.render_widget(Paragraph::new(m).wrap(Wrap { trim: true }), inner);
        return;
    }
    let [down, up] = Layout::vertical([Constraint::Fill(1), Constraint::Fill(1)]).areas(inner);
    spark(f, "down", g.samples.iter().map(|s| s.down).collect(), Color::Cyan, down);
    spark(f, "up", g.samples.iter().map(|s| s.up).collect(), Color::Magenta, up);
}

/// The usage history's busiest names, with a bar scaled to the first.
fn usage(f: &mut Frame, u: &UsageView, area: Rect) {
    let inner = boxed(f, " Usage, last 24 hours, by name ".into(), 80, 20, area);
    let message = match (&u.error, &u.rows) {
        (Some(e), _) => Some(e.clone()),
        (None, None) => Some("loading…".to_string()),
        (None, Some(r)) if r.is_empty() => Some("nothing recorded yet (the history is written once a minute)".into()),
        _ => None,
    };
    if let Some(m) = message {
        f.render_widget(Paragraph::new(m).wrap(Wrap { trim: true }), inner);
        return;
    }
    let rows = u.rows.as_deref().unwrap_or_default();
    let top = rows.first().map_or(1, |r| r.down.saturating_add(r.up).max(1));
    let lines: Vec<Line> = std::iter::once(Line::from(format!("{:<20} {:>10} {:>10}", "NAME", "DOWN", "UP")).bold())
        .chain(rows.iter().take(usize::from(inner.height.saturating_sub(1))).map(|r| {
            let total = r.down.saturating_add(r.up);
            let bar = "█".repeat((total.saturating_mul(30) / top) as usize);
            let name = throttle_common::text::escape(&r.name, 20);
            Line::from(format!("{name:<20} {:>10} {:>10} {bar}", human::bytes(r.down), human::bytes(r.up)))
        }))
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
}

/// The newest samples that fit, newest on the right.
fn spark(f: &mut Frame, label: &str, data: Vec<u64>, color: Color, area: Rect) {
    let now = data.last().copied().unwrap_or(0);
    let peak = data.iter().copied().max().unwrap_or(0);
    let title = format!("{label} {} (peak {})", human::rate(now), human::rate(peak));
    let keep = data.len().saturating_sub(usize::from(area.width));
    let sparkline = Sparkline::default().block(Block::new().title(title)).data(&data[keep..]).style(color);
    f.render_widget(sparkline, area);
}

fn help(f: &mut Frame, area: Rect) {
    let h = u16::try_from(KEYS.len()).unwrap_or(u16::MAX).saturating_add(2);
    let inner = boxed(f, " Keys ".into(), 64, h, area);
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| Line::from(vec![Span::styled(format!("{k:<18}"), Style::new().bold()), Span::raw(*what)]))
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
}
