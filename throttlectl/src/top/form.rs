//! The throttle dialog: two rate fields, parsed with the CLI's syntax.
use crossterm::event::KeyCode;
use throttle_common::rate::Rate;

use super::model::Proc;

/// Longest text a field takes.
pub const MAX_INPUT: usize = 40;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Form {
    pub pid: u32,
    pub name: String,
    pub down: String,
    pub up: String,
    /// Which field takes typing (false: download).
    pub on_up: bool,
    pub error: Option<String>,
    /// The limits the process has now (down, up), 0 = none.
    pub current: (u64, u64),
}

/// What a key did to the dialog.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Open,
    Cancel,
    /// Limits in bytes/s; None = no limit for that direction.
    Submit(Option<u64>, Option<u64>),
}

impl Form {
    pub fn new(p: &Proc) -> Form {
        Form { pid: p.pid, name: p.name.clone(), current: (p.down_limit, p.up_limit), ..Form::default() }
    }

    pub fn key(&mut self, code: KeyCode) -> Outcome {
        match code {
            KeyCode::Esc => return Outcome::Cancel,
            KeyCode::Tab | KeyCode::BackTab | KeyCode::Up | KeyCode::Down => self.on_up = !self.on_up,
            KeyCode::Enter => match self.limits() {
                Ok((down, up)) => return Outcome::Submit(down, up),
                Err(e) => self.error = Some(e),
            },
            KeyCode::Backspace => {
                self.field().pop();
                self.error = None;
            }
            KeyCode::Char(c) if self.field().chars().count() < MAX_INPUT => {
                self.field().push(c);
                self.error = None;
            }
            _ => {}
        }
        Outcome::Open
    }

    fn field(&mut self) -> &mut String {
        if self.on_up {
            &mut self.up
        } else {
            &mut self.down
        }
    }

    /// (down, up) in bytes/s; an empty field is no limit for that direction.
    pub fn limits(&self) -> Result<(Option<u64>, Option<u64>), String> {
        let parse = |label: &str, s: &str| match s.trim() {
            "" => Ok(None),
            t => t.parse::<Rate>().map(|r| Some(r.bytes_per_sec())).map_err(|e| format!("{label}: {e}")),
        };
        match (parse("download", &self.down)?, parse("upload", &self.up)?) {
            (None, None) => Err("give a download and/or an upload limit".into()),
            both => Ok(both),
        }
    }
}
