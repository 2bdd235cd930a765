use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{backend::TestBackend, Terminal};

use super::*;
use crate::{
    api::Failure,
    top::{
        model::{Backend, Dir, Proc, Sample, Scope, Sort},
        state::{Form, Graph, Reply, Selector},
    },
};

fn render(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| draw(f, app)).unwrap();
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        // A wide symbol covers the next cell, as on a terminal.
        let mut skip = 0;
        for x in 0..buf.area.width {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let sym = buf[(x, y)].symbol();
            skip = ratatui::text::Span::raw(sym).width().saturating_sub(1);
            out.push_str(sym);
        }
        out.push('\n');
    }
    out
}

fn app() -> App {
    let mut app = App::new(Sort::Down, Scope::Internet);
    app.tick();
    let procs = vec![
        Proc {
            pid: 4242,
            name: "curl".into(),
            down_rate: 1_258_291,
            up_rate: 512,
            down_total: 3 << 30,
            throttled: true,
            backends: vec!["ebpf".into()],
            down_limit: 1 << 20,
            ..Proc::default()
        },
        Proc { pid: 7, name: "sshd".into(), ..Proc::default() },
    ];
    app.apply(Reply::Top { sort: Sort::Down, scope: Scope::Internet, result: Ok(procs) });
    app.backends = vec![
        Backend {
            name: "ebpf".into(),
            directions: vec!["up".into(), "down".into()],
            priority: "Better".into(),
            available: true,
            default_for: vec!["up".into(), "down".into()],
            active: 1,
            ..Backend::default()
        },
        Backend {
            name: "tc_htb".into(),
            directions: vec!["up".into()],
            priority: "Good".into(),
            available: true,
            ..Backend::default()
        },
        Backend {
            name: "ifb_tc".into(),
            directions: vec!["down".into()],
            priority: "Good".into(),
            reason: "no ifb module".into(),
            ..Backend::default()
        },
    ];
    app
}

/// The app in every mode, each with something in it.
fn every_mode() -> Vec<App> {
    let modes = vec![
        Mode::List,
        Mode::Filter,
        Mode::Throttle(Form {
            pid: 4242,
            name: "curl".into(),
            down: "1Q".into(),
            error: Some("bad".into()),
            ..Form::default()
        }),
        Mode::Backends(None),
        Mode::Backends(Some(Selector { dir: Dir::Down, cursor: Some(0) })),
        Mode::Graph(Graph { pid: 4242, name: "curl".into(), samples: samples(90), error: None }),
        Mode::Graph(Graph { pid: 4242, name: "curl".into(), samples: Vec::new(), error: Some("gone".into()) }),
        Mode::Help,
    ];
    modes
        .into_iter()
        .map(|m| {
            let mut a = app();
            a.mode = m;
            a.lost = Some("chadthrottled is not on the bus".into());
            a
        })
        .collect()
}

fn samples(n: u64) -> Vec<Sample> {
    (0..n).map(|i| Sample { up: i * 100, down: i * 1000 }).collect()
}

#[test]
fn the_list_shows_rates_totals_backends_and_marks() {
    let s = render(&app(), 100, 10);
    assert!(s.contains("sort: down  scope: Internet  2 processes"), "{s}");
    assert!(s.contains("DOWN▼"), "{s}");
    let row = s.lines().find(|l| l.contains("4242")).unwrap();
    for want in ["⚡", "curl", "1.2 MiB/s", "512 B/s", "3.0 GiB", "ebpf"] {
        assert!(row.contains(want), "{want} in {row}");
    }
    assert!(!s.lines().find(|l| l.contains("sshd")).unwrap().contains('⚡'));
    assert!(s.contains("q quit"), "{s}");
}

#[test]
fn narrow_lists_keep_pid_name_and_the_sorted_rate() {
    let s = render(&app(), 40, 6);
    let row = s.lines().find(|l| l.contains("4242")).unwrap();
    assert!(row.contains("curl") && row.contains("1.2 MiB/s"), "{s}");
    assert!(!s.contains("TOTAL"), "{s}");
}

#[test]
fn renders_at_any_size_in_every_mode() {
    for app in every_mode() {
        for (w, h) in [(0, 0), (1, 1), (20, 5), (19, 5), (20, 4), (2, 40), (300, 2), (80, 24)] {
            render(&app, w, h);
        }
        for w in [0, 1, 2, 3, 5, 8, 13, 19, 20, 21, 25, 34, 61] {
            for h in [0, 1, 2, 3, 4, 5, 6, 7, 9, 12] {
                render(&app, w, h);
            }
        }
    }
}

#[test]
fn tiny_terminals_get_a_message() {
    let s = render(&app(), 19, 5);
    assert!(s.contains("terminal"), "{s}");
    assert_eq!(render(&app(), 1, 1), "t\n");
    assert_eq!(render(&app(), 0, 0), "");
    let s = render(&app(), 20, 5);
    assert!(s.contains("chadthrottle"), "20x5 is the smallest full screen: {s}");
}

#[test]
fn filter_shows_in_the_header() {
    let mut a = app();
    a.key(KeyEvent::new(KeyCode::Char('/'), KeyModifiers::NONE));
    a.key(KeyEvent::new(KeyCode::Char('s'), KeyModifiers::NONE));
    let s = render(&a, 100, 8);
    assert!(s.contains("filter: s▏") && s.contains("1 processes"), "{s}");
    assert!(!s.contains("curl"));
}

#[test]
fn lost_daemon_shows_in_the_status_line() {
    let mut a = app();
    a.tick();
    a.apply(Reply::Top { sort: Sort::Down, scope: Scope::Internet, result: Err(Failure::unreachable("no bus")) });
    let s = render(&a, 100, 8);
    assert!(s.contains("daemon unreachable, retrying (no bus)"), "{s}");
    assert!(s.contains("curl"), "the last sample stays: {s}");
}

#[test]
fn backend_modal_shows_defaults_availability_and_reasons() {
    let mut a = app();
    a.mode = Mode::Backends(None);
    let s = render(&a, 110, 20);
    let ebpf = s.lines().find(|l| l.contains("ebpf") && l.contains("Better")).unwrap();
    assert_eq!(ebpf.matches('⭐').count(), 2, "{ebpf}");
    assert!(ebpf.contains("up+down") && ebpf.contains('✅'), "{ebpf}");
    assert!(s.lines().any(|l| l.contains("ifb_tc") && l.contains("❌ no ifb module")), "{s}");
    a.mode = Mode::Backends(Some(Selector { dir: Dir::Down, cursor: Some(0) }));
    let s = render(&a, 110, 20);
    assert!(s.contains("Default for download (Tab: upload)"), "{s}");
    assert!(s.lines().any(|l| l.contains("tc_htb") && l.contains("✗ cannot do download")), "{s}");
}

#[test]
fn throttle_dialog_shows_fields_and_the_error() {
    let mut a = app();
    a.key(KeyEvent::new(KeyCode::Char('t'), KeyModifiers::NONE));
    for c in "1Q".chars() {
        a.key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
    }
    a.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    let s = render(&a, 100, 24);
    assert!(s.contains("Throttle pid 4242 (curl)"), "{s}");
    assert!(s.contains("Download: 1Q▏"), "{s}");
    assert!(s.contains("now: down 1M up -"), "{s}");
    assert!(s.contains("download: unknown unit 'Q'"), "{s}");
}

#[test]
fn graph_shows_current_and_peak() {
    let mut a = app();
    a.mode = Mode::Graph(Graph { pid: 4242, name: "curl".into(), samples: samples(60), error: None });
    let s = render(&a, 100, 24);
    assert!(s.contains("pid 4242 (curl), last 60 s"), "{s}");
    assert!(s.contains("down 57.6 KiB/s (peak 57.6 KiB/s)"), "{s}");
    assert!(s.contains("up 5.8 KiB/s"), "{s}");
}

#[test]
fn help_lists_every_key() {
    let mut a = app();
    a.mode = Mode::Help;
    let s = render(&a, 100, 24);
    for (k, what) in popup::KEYS {
        assert!(s.contains(k) && s.contains(what), "{k} {what}: {s}");
    }
}

#[test]
fn rates_from_1000_to_1023_units_fit_their_column() {
    let mut a = app();
    let mut p = a.procs[0].clone();
    p.down_rate = 1_041_613; // 1017.2 KiB/s
    p.up_rate = 1_023_948; // 999.9 KiB/s
    a.apply(Reply::Top { sort: Sort::Down, scope: Scope::Internet, result: Ok(vec![p]) });
    let s = render(&a, 100, 8);
    let row = s.lines().find(|l| l.contains("4242")).unwrap();
    assert!(row.contains(" 1.0 MiB/s") && row.contains(" 999.9 KiB/s"), "{row}");
    assert!(!row.contains("017.2"), "{row}");
}

#[test]
fn an_empty_answer_is_not_waiting_for_the_daemon() {
    let mut a = App::new(Sort::Down, Scope::Internet);
    let s = render(&a, 100, 8);
    assert!(s.contains("waiting for chadthrottled"), "{s}");
    a.tick();
    a.apply(Reply::Top { sort: Sort::Down, scope: Scope::Internet, result: Ok(Vec::new()) });
    let s = render(&a, 100, 8);
    assert!(!s.contains("waiting for chadthrottled"), "{s}");
    assert!(s.contains("no process has had traffic yet"), "{s}");
}

#[test]
fn the_usage_view_lists_names_with_bars() {
    use crate::top::{model::Usage, state::UsageView};
    let mut a = app();
    let rows = vec![
        Usage { name: "curl".into(), down: 3 << 30, up: 10 << 20 },
        Usage { name: "apt".into(), down: 1 << 30, up: 0 },
    ];
    a.mode = Mode::Usage(UsageView { rows: Some(rows), error: None });
    let screen = render(&a, 100, 24);
    assert!(screen.contains("Usage, last 24 hours, by name"), "{screen}");
    let curl = screen.lines().find(|l| l.contains("curl  ")).unwrap_or_default();
    assert!(curl.contains("3.0 GiB") && curl.contains("10.0 MiB") && curl.contains(&"█".repeat(30)), "{screen}");
    let apt = screen.lines().find(|l| l.contains("apt ")).unwrap_or_default();
    assert!(apt.contains("1.0 GiB") && apt.contains(&"█".repeat(7)) && !apt.contains(&"█".repeat(11)), "{screen}");
    a.mode = Mode::Usage(UsageView { rows: Some(Vec::new()), error: None });
    assert!(render(&a, 100, 24).contains("nothing recorded yet"));
}
