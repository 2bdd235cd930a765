use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::*;

fn key(app: &mut App, code: KeyCode) -> Vec<Effect> {
    app.key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn typed(app: &mut App, text: &str) {
    for c in text.chars() {
        key(app, KeyCode::Char(c));
    }
}

fn proc(pid: u32, name: &str) -> Proc {
    Proc { pid, name: name.into(), ..Proc::default() }
}

/// An app that has received one sample.
fn app_with(procs: Vec<Proc>) -> App {
    let mut app = App::new(Sort::Total, Scope::All);
    app.tick();
    app.apply(Reply::Top { sort: Sort::Total, scope: Scope::All, result: Ok(procs) });
    app
}

fn sample() -> App {
    app_with(vec![proc(10, "firefox"), proc(20, "curl"), proc(30, "Firefox-bin"), proc(40, "ssh")])
}

fn backend(name: &str, dirs: &[&str], available: bool, default_for: &[&str]) -> Backend {
    Backend {
        name: name.into(),
        directions: dirs.iter().map(|s| s.to_string()).collect(),
        available,
        reason: if available { String::new() } else { "kernel lacks ifb".into() },
        default_for: default_for.iter().map(|s| s.to_string()).collect(),
        ..Backend::default()
    }
}

fn selector(app: &App) -> Option<Selector> {
    match &app.mode {
        Mode::Backends(s) => s.clone(),
        m => panic!("not in the backend modal: {m:?}"),
    }
}

#[test]
fn first_tick_asks_once_until_answered() {
    let mut app = App::new(Sort::Down, Scope::Local);
    assert_eq!(app.tick(), [Effect::Refresh { sort: Sort::Down, scope: Scope::Local }]);
    assert_eq!(app.tick(), [], "no second request while one is unanswered");
    app.apply(Reply::Top { sort: Sort::Down, scope: Scope::Local, result: Ok(vec![proc(1, "a")]) });
    assert_eq!(app.selected, Some(1), "the first row is selected");
    assert_eq!(app.tick().len(), 1);
}

#[test]
fn s_cycles_the_sort_and_asks_at_once() {
    let mut app = sample();
    assert_eq!(key(&mut app, KeyCode::Char('s')), [Effect::Refresh { sort: Sort::Down, scope: Scope::All }]);
    assert_eq!(app.sort, Sort::Down);
    key(&mut app, KeyCode::Char('s'));
    assert_eq!(app.sort, Sort::Up);
    key(&mut app, KeyCode::Char('s'));
    assert_eq!(app.sort, Sort::Total);
}

#[test]
fn answers_for_an_old_sort_are_dropped() {
    let mut app = sample();
    key(&mut app, KeyCode::Char('s'));
    app.apply(Reply::Top { sort: Sort::Total, scope: Scope::All, result: Ok(vec![proc(99, "old")]) });
    assert_eq!(app.procs.len(), 4, "stale sample ignored");
    app.apply(Reply::Top { sort: Sort::Down, scope: Scope::All, result: Ok(vec![proc(5, "new")]) });
    assert_eq!(app.procs[0].pid, 5);
}

#[test]
fn v_cycles_the_scope() {
    let mut app = sample();
    let scopes: Vec<Scope> = (0..3)
        .map(|_| {
            key(&mut app, KeyCode::Char('v'));
            app.scope
        })
        .collect();
    assert_eq!(scopes, [Scope::Internet, Scope::Local, Scope::All]);
}

#[test]
fn filter_typing_narrows_case_insensitively() {
    let mut app = sample();
    key(&mut app, KeyCode::Char('/'));
    assert_eq!(app.mode, Mode::Filter);
    typed(&mut app, "firq");
    assert_eq!(app.filter, "firq", "q is text while filtering, not quit");
    assert!(!app.quit);
    key(&mut app, KeyCode::Backspace);
    assert_eq!(app.visible().iter().map(|p| p.pid).collect::<Vec<_>>(), [10, 30]);
    assert_eq!(app.selected, Some(10));
    key(&mut app, KeyCode::Enter);
    assert_eq!((app.mode.clone(), app.filter.as_str()), (Mode::List, "fir"), "Enter keeps the filter");
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "x");
    key(&mut app, KeyCode::Esc);
    assert_eq!((app.mode.clone(), app.filter.as_str()), (Mode::List, ""), "Esc clears it");
    assert_eq!(app.visible().len(), 4);
}

#[test]
fn selection_follows_the_process_across_samples() {
    let mut app = sample();
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Char('j'));
    assert_eq!(app.selected, Some(30));
    app.tick();
    app.apply(Reply::Top { sort: Sort::Total, scope: Scope::All, result: Ok(vec![proc(30, "x"), proc(10, "y")]) });
    assert_eq!(app.selected_index(), Some(0));
    app.tick();
    app.apply(Reply::Top { sort: Sort::Total, scope: Scope::All, result: Ok(vec![proc(10, "y")]) });
    assert_eq!(app.selected, Some(10), "gone: the nearest row");
    key(&mut app, KeyCode::Up);
    key(&mut app, KeyCode::Home);
    key(&mut app, KeyCode::End);
    assert_eq!(app.selected, Some(10));
}

#[test]
fn throttle_dialog_parses_rates() {
    let mut app = sample();
    key(&mut app, KeyCode::Char('t'));
    assert!(matches!(&app.mode, Mode::Throttle(f) if f.pid == 10));
    typed(&mut app, "1M");
    key(&mut app, KeyCode::Tab);
    typed(&mut app, "512K");
    let fx = key(&mut app, KeyCode::Enter);
    assert_eq!(fx, [Effect::Limit { pid: 10, name: "firefox".into(), down: Some(1 << 20), up: Some(512 << 10) }]);
    assert_eq!(app.mode, Mode::List);
}

#[test]
fn throttle_dialog_empty_is_unlimited_and_both_empty_is_an_error() {
    let mut app = sample();
    key(&mut app, KeyCode::Char('t'));
    assert_eq!(key(&mut app, KeyCode::Enter), []);
    let Mode::Throttle(f) = &app.mode else { panic!() };
    assert!(f.error.as_deref().unwrap().contains("download and/or an upload"));
    key(&mut app, KeyCode::Down);
    typed(&mut app, "10mbit");
    let fx = key(&mut app, KeyCode::Enter);
    assert_eq!(fx, [Effect::Limit { pid: 10, name: "firefox".into(), down: None, up: Some(1_250_000) }]);
}

#[test]
fn throttle_dialog_shows_parse_errors_and_stays_open() {
    let mut app = sample();
    key(&mut app, KeyCode::Char('t'));
    typed(&mut app, "1Q");
    assert_eq!(key(&mut app, KeyCode::Enter), []);
    let Mode::Throttle(f) = &app.mode else { panic!("dialog closed") };
    assert_eq!(f.error.as_deref(), Some("download: unknown unit 'Q' (use K, M, G, KiB, MB, kbit, mbit or gbit)"));
    key(&mut app, KeyCode::Backspace);
    let Mode::Throttle(f) = &app.mode else { panic!() };
    assert_eq!((f.down.as_str(), f.error.clone()), ("1", None), "editing clears the error");
    key(&mut app, KeyCode::Tab);
    typed(&mut app, "0");
    key(&mut app, KeyCode::Enter);
    let Mode::Throttle(f) = &app.mode else { panic!() };
    assert_eq!(f.error.as_deref(), Some("upload: rate must be greater than zero"));
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.mode, Mode::List);
}

#[test]
fn actions_need_a_selection() {
    let mut app = app_with(Vec::new());
    for c in ['t', 'r', 'g'] {
        assert_eq!(key(&mut app, KeyCode::Char(c)), []);
        assert_eq!(app.mode, Mode::List);
        assert_eq!(app.status, Some((Level::Error, "no process selected".into())));
    }
}

#[test]
fn r_removes_and_g_graphs_the_selection() {
    let mut app = sample();
    assert_eq!(key(&mut app, KeyCode::Char('r')), [Effect::Remove(10)]);
    assert_eq!(key(&mut app, KeyCode::Char('x')), [Effect::Block(10)]);
    assert_eq!(key(&mut app, KeyCode::Char('p')), [Effect::Priority(10)]);
    assert_eq!(key(&mut app, KeyCode::Char('g')), [Effect::History(10)]);
    assert!(!app.tick().contains(&Effect::History(10)), "one request at a time");
    app.apply(Reply::History(10, Ok(vec![Sample { up: 1, down: 2 }])));
    let Mode::Graph(g) = &app.mode else { panic!() };
    assert_eq!(g.samples, [Sample { up: 1, down: 2 }]);
    assert!(app.tick().contains(&Effect::History(10)), "the graph follows");
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.mode, Mode::List);
}

#[test]
fn q_and_ctrl_c_quit() {
    let mut app = sample();
    key(&mut app, KeyCode::Char('q'));
    assert!(app.quit);
    let mut app = sample();
    key(&mut app, KeyCode::Char('t'));
    app.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(app.quit, "Ctrl-C quits even from a dialog");
}

#[test]
fn help_closes_on_any_key() {
    let mut app = sample();
    key(&mut app, KeyCode::Char('?'));
    assert_eq!(app.mode, Mode::Help);
    key(&mut app, KeyCode::Char('x'));
    assert_eq!(app.mode, Mode::List);
}

/// ebpf: both, default up; tc_htb: up only; ifb_tc: down, unavailable; nft: both, default down.
fn with_backends() -> App {
    let mut app = sample();
    assert_eq!(key(&mut app, KeyCode::Char('b')), [Effect::Backends]);
    app.apply(Reply::Backends(Ok(vec![
        backend("ebpf", &["up", "down"], true, &["up"]),
        backend("tc_htb", &["up"], true, &[]),
        backend("ifb_tc", &["down"], false, &[]),
        backend("nft", &["up", "down"], true, &["down"]),
    ])));
    app
}

#[test]
fn selector_starts_on_the_default_and_skips_what_cannot_be_chosen() {
    let mut app = with_backends();
    assert_eq!(selector(&app), None);
    key(&mut app, KeyCode::Enter);
    assert_eq!(selector(&app), Some(Selector { dir: Dir::Up, cursor: Some(0) }));
    key(&mut app, KeyCode::Down);
    assert_eq!(selector(&app).unwrap().cursor, Some(1));
    key(&mut app, KeyCode::Char('j'));
    assert_eq!(selector(&app).unwrap().cursor, Some(3), "ifb_tc is skipped");
    key(&mut app, KeyCode::Down);
    assert_eq!(selector(&app).unwrap().cursor, Some(3), "stops at the end");
    key(&mut app, KeyCode::Char('k'));
    assert_eq!(selector(&app).unwrap().cursor, Some(1));
}

#[test]
fn tab_switches_direction() {
    let mut app = with_backends();
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Tab);
    assert_eq!(selector(&app), Some(Selector { dir: Dir::Down, cursor: Some(3) }), "on the download default");
    key(&mut app, KeyCode::Up);
    assert_eq!(selector(&app).unwrap().cursor, Some(0), "tc_htb (up only) and ifb_tc (unavailable) are skipped");
    key(&mut app, KeyCode::Up);
    assert_eq!(selector(&app).unwrap().cursor, Some(0));
    key(&mut app, KeyCode::BackTab);
    assert_eq!(selector(&app).unwrap().dir, Dir::Up);
}

#[test]
fn enter_sets_the_default_for_that_direction() {
    let mut app = with_backends();
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Down);
    let fx = key(&mut app, KeyCode::Enter);
    assert_eq!(fx, [Effect::SetDefault { dir: Dir::Up, backend: "tc_htb".into() }]);
    assert_eq!(selector(&app), None, "back to the list");
    let fx = app.apply(Reply::Done(Ok("New throttles will use 'tc_htb' for upload".into())));
    assert!(fx.contains(&Effect::Backends), "the modal reloads");
    assert_eq!(app.status, Some((Level::Info, "New throttles will use 'tc_htb' for upload".into())));
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.mode, Mode::List);
}

#[test]
fn no_choosable_backend_means_no_cursor() {
    let mut app = sample();
    key(&mut app, KeyCode::Char('b'));
    app.apply(Reply::Backends(Ok(vec![backend("ifb_tc", &["down"], false, &[])])));
    key(&mut app, KeyCode::Enter);
    assert_eq!(selector(&app).unwrap().cursor, None);
    key(&mut app, KeyCode::Down);
    assert_eq!(key(&mut app, KeyCode::Enter), []);
    assert_eq!(app.status, Some((Level::Error, "no backend can do upload".into())));
}

#[test]
fn a_lost_daemon_is_remembered_until_it_answers() {
    let mut app = sample();
    app.tick();
    let lost = Failure::unreachable("chadthrottled is not on the bus");
    app.apply(Reply::Top { sort: Sort::Total, scope: Scope::All, result: Err(lost) });
    assert_eq!(app.lost.as_deref(), Some("chadthrottled is not on the bus"));
    assert_eq!(app.procs.len(), 4, "the last sample stays");
    assert_eq!(app.tick().len(), 1, "and it keeps asking");
    app.apply(Reply::Top { sort: Sort::Total, scope: Scope::All, result: Ok(vec![]) });
    assert_eq!(app.lost, None);
    assert_eq!(app.status, Some((Level::Info, "connected to chadthrottled".into())));
}

#[test]
fn refusals_show_in_the_status_line() {
    let mut app = sample();
    app.apply(Reply::Done(Err(Failure::usage("pid 10 is limited by name throttle 1 (firefox)"))));
    assert_eq!(app.status, Some((Level::Error, "pid 10 is limited by name throttle 1 (firefox)".into())));
    assert_eq!(app.lost, None);
}

#[test]
fn u_shows_the_usage_history() {
    let mut app = sample();
    assert_eq!(key(&mut app, KeyCode::Char('u')), [Effect::Usage]);
    assert_eq!(app.mode, Mode::Usage(UsageView::default()));
    assert!(!app.tick().contains(&Effect::Usage), "one request at a time");
    let rows = vec![Usage { name: "curl".into(), down: 5 << 20, up: 1 << 10 }];
    app.apply(Reply::Usage(Ok(rows.clone())));
    let Mode::Usage(u) = &app.mode else { panic!() };
    assert_eq!(u.rows.as_deref(), Some(&rows[..]));
    app.apply(Reply::Usage(Err(Failure::other("the usage history is off"))));
    let Mode::Usage(u) = &app.mode else { panic!() };
    assert_eq!(u.error.as_deref(), Some("the usage history is off"));
    key(&mut app, KeyCode::Char('u'));
    assert_eq!(app.mode, Mode::List);
}
