//! `throttlectl manpage`: the man page, throttlectl(1), from the clap
//! definition, section by section, with the commands in this one page (no
//! throttlectl-limit(1) pages exist, so none is named) and the sections
//! clap does not know: EXIT STATUS, ENVIRONMENT, EXAMPLES, SEE ALSO.
use std::io::Write;

use clap::CommandFactory as _;
use clap_mangen::Man;

use crate::cli::Cli;

pub fn render(w: &mut dyn Write) -> std::io::Result<()> {
    let cmd = Cli::command();
    let man = Man::new(cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    writeln!(w, ".SH COMMANDS")?;
    writeln!(w, "Without a command, \\fBthrottlectl\\fR runs \\fBstatus\\fR.")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        command(w, sub)?;
    }
    w.write_all(EXTRA.as_bytes())?;
    man.render_version_section(w)
}

/// One command: a subsection with its synopsis, what it does, its options
/// (the global ones are in OPTIONS above).
fn command(w: &mut dyn Write, sub: &clap::Command) -> std::io::Result<()> {
    let name = sub.get_name();
    let sub = sub.clone().bin_name(format!("throttlectl {name}")).disable_help_flag(true);
    let about = sub.get_long_about().or_else(|| sub.get_about()).map(|s| s.to_string()).unwrap_or_default();
    let has_args = sub.get_arguments().next().is_some();
    let man = Man::new(sub);
    writeln!(w, ".SS {name}")?;
    without_heading(w, |b| man.render_synopsis_section(b))?;
    writeln!(w, ".PP")?;
    for line in about.lines() {
        writeln!(w, "{}", escape(line))?;
    }
    if has_args {
        without_heading(w, |b| man.render_options_section(b))?;
    }
    Ok(())
}

/// A rendered section minus its `.SH` line.
fn without_heading(w: &mut dyn Write, f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    f(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    for line in text.lines().filter(|l| !l.starts_with(".SH")) {
        writeln!(w, "{line}")?;
    }
    Ok(())
}

/// Plain text as a roff text line.
fn escape(line: &str) -> String {
    let s = line.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

const EXTRA: &str = r#".SH OUTPUT
With \fB\-\-json\fR every command (except \fBcompletions\fR) prints JSON on
stdout: one document, or one per line for \fBmonitor\fR. A failure prints
.RS
.nf
{"error": {"code": 4, "message": "...", "name": "org.chadthrottle.Error.NoSuchThrottle"}}
.fi
.RE
on stdout, where \fIcode\fR is the exit status and \fIname\fR the D\-Bus error
name (null when the failure is not a D\-Bus error reply); the message is also
written to stderr as text. \fBstatus \-\-json\fR with the daemon down prints
\fB{"running": false, "error": {...}}\fR and exits with 5.
.PP
Symbols (\[u2B50] default backend, \[u2705]/\[u274C] availability, \[u26A1] throttled) are
written only when stdout is a terminal and the locale is UTF\-8; otherwise
\fB*\fR, \fByes\fR and \fBno\fR stand in for them.
.SH EXIT STATUS
.TP
.B 0
Success.
.TP
.B 1
Any other failure (the daemon or a backend failed).
.TP
.B 2
Usage error or invalid input (a bad option, rate, backend or \fB\-\-bus\fR).
.TP
.B 3
Not authorized (polkit refused), or the user's share of throttles is used up.
.TP
.B 4
Not found (no such process or throttle).
.TP
.B 5
The daemon is unreachable: not running, not on the bus, or no answer within
\fB\-\-timeout\fR.
.TP
.B 6
The daemon is busy with this user's requests; try again.
.SH ENVIRONMENT
.TP
.B DBUS_SYSTEM_BUS_ADDRESS
The system bus's address (\fB\-\-bus system\fR, the default).
.TP
.B DBUS_SESSION_BUS_ADDRESS
The session bus's address (\fB\-\-bus session\fR).
.TP
.B LC_ALL, LC_CTYPE, LANG
The first one set decides whether the locale is UTF\-8, and so whether symbols
or their ASCII stand\-ins are printed (symbols also need stdout to be a
terminal).
.TP
.B COMPLETE
Set by the completion scripts (\fBthrottlectl completions\fR): with
\fBCOMPLETE=\fIshell\fR, throttlectl prints completion candidates for the
words after \fB\-\-\fR instead of running a command.
.SH EXAMPLES
.TP
.B throttlectl limit firefox \-\-down 2M
Limit every firefox process to 2 MiB/s of downloads.
.TP
.B throttlectl limit 1234 \-\-tree \-\-up 512K \-\-backend tc_htb
Limit uploads of process 1234 and its descendants, with the tc_htb backend.
.TP
.B throttlectl limit firefox \-\-quota 5G/month \-\-then 256K
Full speed until firefox has moved 5 GiB this month (both directions), then
256 KiB/s each way until the 1st; \fB\-\-then block\fR blocks instead. The
usage survives restarts; \fBlist\fR shows it as a percentage.
.TP
.B throttlectl limit backup.service \-\-up 1M \-\-when "Mon\-Fri 09:00\-17:00" \-\-otherwise 10M
1 MiB/s of uploads during work hours (local time), 10 MiB/s outside them.
Without \fB\-\-otherwise\fR nothing applies outside the windows.
.TP
.B throttlectl limit \-\-all \-\-down 20M \-\-up 5M
A cap on the whole machine: every process's packets pass their own throttle,
then their user's cap, then this one. Caps run on the ebpf backend; with
\fB\-\-backend tc_htb\fR or \fBifb_tc\fR the all cap is the top class of
that backend's HTB tree instead. A user cap runs on ebpf only.
.TP
.B throttlectl limit \-\-user alice \-\-up 2M
A cap on every process of alice (a user name or a uid), on top of each
process's own throttle; \fBlist\fR shows the caps over each throttle.
.TP
.B throttlectl link \-\-down 95M; throttlectl priority steam high
Under the link capacity (or the \fB\-\-all\fR cap where lower), saturated
throttles share by weight: low 1, normal 2, high 4, critical 8.
.TP
.B throttlectl limit \-\-unit backup.service \-\-up 10mbit
Limit a systemd unit; the limit waits if the unit is not running.
.TP
.B throttlectl \-\-json list
The throttles as JSON.
.TP
.B throttlectl \-q unlimit firefox
Remove the throttle of firefox, silently.
.TP
.B throttlectl top \-\-once \-\-sort down \-\-count 5
The five processes downloading the most.
.TP
.B throttlectl \-\-bus unix:path=/run/test/bus \-\-timeout 5 status
The daemon on another bus, waiting at most 5 s for each answer.
.SH SEE ALSO
.BR chadthrottled (8),
.BR busctl (1),
.BR systemctl (1)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_its_sections_and_names_no_subcommand_pages() {
        let mut buf = Vec::new();
        render(&mut buf).unwrap();
        let page = String::from_utf8(buf).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH throttlectl 1"), "{}", &page[..200]);
        for s in ["NAME", "SYNOPSIS", "OPTIONS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "EXAMPLES", "SEE ALSO"] {
            assert!(page.contains(&format!(".SH {s}")) || page.contains(&format!(".SH \"{s}\"")), "no {s}");
        }
        assert!(!page.contains("throttlectl-"), "names a subcommand page");
        assert!(!page.contains("throttlectl\\-"), "names a subcommand page");
        for cmd in ["limit", "unlimit", "list", "backends", "default", "migrate", "top", "rate", "completions"] {
            assert!(page.contains(&format!(".SS {cmd}\n")), "no command {cmd}");
        }
        assert!(!page.contains(".SS manpage"), "hidden commands stay hidden");
        for code in 0..=6 {
            assert!(page.contains(&format!(".B {code}\n")), "exit status {code}");
        }
        for s in ["chadthrottled (8)", "busctl (1)", "systemctl (1)", "DBUS_SYSTEM_BUS_ADDRESS", "LC_ALL"] {
            assert!(page.contains(s), "{s}");
        }
        // Each command's options are there, with their help.
        assert!(page.contains("Every process in this systemd unit"));
        assert!(page.contains("\\-\\-timeout"));
    }
}
