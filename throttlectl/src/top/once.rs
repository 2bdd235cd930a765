//! `top --once`: one sample, as a table or JSON, for scripts.
use super::{human, model::Proc};
use crate::output::{self, Style};

pub fn print(procs: &[Proc], st: &Style) {
    if st.json {
        output::json(&procs);
    } else {
        print!("{}", table(procs, st));
    }
}

pub fn table(procs: &[Proc], st: &Style) -> String {
    let mut out = String::new();
    if st.legend {
        out = format!(
            "   {:>7} {:<16} {:>11} {:>11} {:>10} {:>10} BACKENDS\n",
            "PID",
            "NAME",
            "DOWN",
            "UP",
            st.sym("TOTAL↓", "TOTAL-DN"),
            st.sym("TOTAL↑", "TOTAL-UP")
        );
    }
    for p in procs {
        let line = format!(
            "{} {:>7} {:<16} {:>11} {:>11} {:>10} {:>10} {}",
            // ⚡ is two columns wide; its stand-in is padded to match.
            match (p.blocked(), p.throttled) {
                (true, _) => st.sym("⛔", "X "),
                (false, true) => st.sym("⚡", "* "),
                (false, false) => "  ",
            },
            p.pid,
            p.name,
            human::rate(p.down_rate),
            human::rate(p.up_rate),
            human::bytes(p.down_total),
            human::bytes(p.up_total),
            if p.blocked() { "BLOCKED".into() } else { p.backends.join(",") }
        );
        out += line.trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_marks_throttled_rows() {
        let p = Proc {
            pid: 42,
            name: "curl".into(),
            down_rate: 1536,
            throttled: true,
            backends: vec!["ebpf".into()],
            ..Proc::default()
        };
        let procs = [p, Proc { pid: 7, name: "sshd".into(), ..Proc::default() }];
        let st = Style { legend: true, unicode: true, ..Style::default() };
        let t = table(&procs, &st);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("PID") && lines[0].contains("TOTAL↓") && lines[0].ends_with("BACKENDS"));
        assert!(
            lines[1].starts_with("⚡      42 curl") && lines[1].contains("1.5 KiB/s") && lines[1].ends_with("ebpf")
        );
        assert!(lines[2].starts_with("         7 sshd") && lines[2].ends_with("0 B"), "{}", lines[2]);
        // Without the legend, in ASCII: only the rows, and no symbol at all.
        let t = table(&procs, &Style::default());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("*       42 curl"), "{}", lines[0]);
        assert!(t.is_ascii(), "{t}");
    }

    #[test]
    fn table_shows_a_block_as_a_block() {
        let p =
            Proc { pid: 9, name: "ct-x".into(), throttled: true, backends: vec!["block".into()], ..Proc::default() };
        let t = table(&[p], &Style::default());
        assert!(t.starts_with("X        9 ct-x") && t.trim_end().ends_with("BLOCKED"), "{t}");
    }

    #[test]
    fn json_uses_the_api_field_names() {
        let v = serde_json::to_value([Proc { pid: 1, throttle_ids: vec![2], ..Proc::default() }]).unwrap();
        for k in ["pid", "uid", "name", "exe", "down_rate", "up_rate", "down_total", "up_total", "throttled"] {
            assert!(v[0].get(k).is_some(), "{k}");
        }
        for k in ["throttle_ids", "backends", "down_limit", "up_limit"] {
            assert!(v[0].get(k).is_some(), "{k}");
        }
    }
}
