//! Draws the app: header, process list, status line, key hints, and the
//! open dialog on top. Any size, down to 0x0, must draw without panicking.
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Paragraph, Row, Table, TableState, Wrap},
    Frame,
};

use super::{
    columns, popup,
    state::{App, Level, Mode},
};

/// Below this the normal screen does not fit.
pub const MIN_WIDTH: u16 = 20;
pub const MIN_HEIGHT: u16 = 5;

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        f.render_widget(Paragraph::new("terminal too small").wrap(Wrap { trim: true }), area);
        return;
    }
    let [head, body, status, keys] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(1), Constraint::Length(1), Constraint::Length(1)])
            .areas(area);
    f.render_widget(header(app), head);
    list(f, app, body);
    f.render_widget(status_line(app), status);
    f.render_widget(Paragraph::new(hints(&app.mode)).style(Style::new().fg(Color::DarkGray)), keys);
    popup::draw(f, app, area);
}

fn header(app: &App) -> Paragraph<'static> {
    let filter = match (&app.mode, app.filter.as_str()) {
        (Mode::Filter, f) => format!("  filter: {f}▏"),
        (_, "") => String::new(),
        (_, f) => format!("  filter: {f}"),
    };
    let line = Line::from(vec![
        Span::styled(" chadthrottle top ", Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)),
        Span::raw(format!("  sort: {}  scope: {}", app.sort.as_str(), app.scope.label())),
        Span::styled(filter, Style::new().fg(Color::Yellow)),
        Span::raw(format!("  {} processes", app.visible().len())),
    ]);
    Paragraph::new(line)
}

fn list(f: &mut Frame, app: &App, area: Rect) {
    let rows = app.visible();
    if rows.is_empty() {
        let text = match (app.procs.is_empty(), app.answered) {
            (false, _) => "no process matches the filter",
            (true, false) => "waiting for chadthrottled…",
            (true, true) => "no process has had traffic yet",
        };
        f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    let cols = columns::fitting(area.width, app.sort);
    let widths: Vec<Constraint> = cols.iter().map(|c| c.constraint()).collect();
    let titles = Row::new(cols.iter().map(|c| c.title(app.sort))).style(Style::new().bold());
    let rows = rows.iter().map(|p| Row::new(cols.iter().map(|c| c.cell(p))));
    let table = Table::new(rows, widths)
        .header(titles)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state = TableState::default().with_selected(app.selected_index());
    f.render_stateful_widget(table, area, &mut state);
}

fn status_line(app: &App) -> Paragraph<'static> {
    let (style, text) = match (&app.lost, &app.status) {
        (Some(why), _) => (Style::new().fg(Color::Red), format!("daemon unreachable, retrying ({why})")),
        (None, Some((Level::Error, t))) => (Style::new().fg(Color::Red), t.clone()),
        (None, Some((Level::Info, t))) => (Style::new().fg(Color::Green), t.clone()),
        (None, None) => (Style::new(), String::new()),
    };
    Paragraph::new(text).style(style)
}

fn hints(mode: &Mode) -> &'static str {
    match mode {
        Mode::List => {
            "q quit  ↑↓ move  s sort  v scope  / filter  t throttle  r unthrottle  x block  p priority  g graph  u usage  b backends  ? help"
        }
        Mode::Filter => "type a name  Enter keep  Esc clear",
        Mode::Throttle(_) => "Enter apply  Tab other field  Esc cancel",
        Mode::Backends(None) => "Enter choose a default  Esc close",
        Mode::Backends(Some(_)) => "↑↓ choose  Enter set  Tab upload/download  Esc back",
        Mode::Graph(_) | Mode::Usage(_) => "Esc close",
        Mode::Help => "any key closes",
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
