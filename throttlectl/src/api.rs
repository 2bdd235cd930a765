//! The daemon's API as seen from the client: proxies, lookups and the
//! failures a user sees, each with a distinct exit code.
use std::process::ExitCode;

use futures_util::StreamExt;
use throttle_api::{Error, BUS_NAME, MANAGER_INTERFACE};
pub use throttle_api::{ManagerProxy, ThrottleProxy};
use zbus::{zvariant::OwnedObjectPath, Connection};

/// One throttle as the CLI shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ThrottleView {
    #[serde(skip)]
    pub path: OwnedObjectPath,
    pub id: u32,
    pub kind: String,
    pub target: String,
    /// Bytes per second; 0 = unlimited.
    pub down: u64,
    pub up: u64,
    pub down_backend: String,
    pub up_backend: String,
    pub pids: Vec<u32>,
    /// "active", or "failed" (saved, not applied now: see status_detail).
    pub status: String,
    pub status_detail: String,
}

pub struct Client {
    pub conn: Connection,
    pub manager: ManagerProxy<'static>,
}

impl Client {
    pub async fn connect(bus: &str) -> Result<Client, Failure> {
        let conn = match bus {
            "system" => Connection::system().await,
            "session" => Connection::session().await,
            addr => match zbus::connection::Builder::address(addr) {
                Ok(b) => b.build().await,
                Err(e) => Err(e),
            },
        }
        .map_err(|e| Failure::unreachable(format!("cannot reach the {bus} bus: {e}")))?;
        let manager = ManagerProxy::new(&conn).await.map_err(Failure::from)?;
        Ok(Client { conn, manager })
    }

    pub async fn throttle(&self, path: &OwnedObjectPath) -> Result<ThrottleView, Failure> {
        let p = ThrottleProxy::builder(&self.conn).path(path.clone())?.build().await?;
        Ok(ThrottleView {
            path: path.clone(),
            id: p.id().await?,
            kind: p.kind().await?,
            target: p.target().await?,
            down: p.down_limit().await?,
            up: p.up_limit().await?,
            down_backend: p.down_backend().await?,
            up_backend: p.up_backend().await?,
            pids: p.pids().await?,
            // A daemon older than these properties has only active throttles.
            status: p.status().await.unwrap_or_else(|_| "active".into()),
            status_detail: p.status_detail().await.unwrap_or_default(),
        })
    }

    pub async fn throttles(&self) -> Result<Vec<ThrottleView>, Failure> {
        let mut out = Vec::new();
        for path in self.manager.list_throttles().await? {
            // A throttle may vanish between the listing and the read.
            if let Ok(t) = self.throttle(&path).await {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// A throttle id, the pid a pid throttle limits, or a name target.
    pub async fn find(&self, what: &str) -> Result<ThrottleView, Failure> {
        let all = self.throttles().await?;
        let by_pid = |t: &&ThrottleView| matches!(t.kind.as_str(), "pid" | "tree") && t.target == what;
        let by_id = |t: &&ThrottleView| what.parse::<u32>().is_ok_and(|id| t.id == id);
        let by_value = |t: &&ThrottleView| t.target == what;
        let hit = all.iter().find(by_pid).or_else(|| all.iter().find(by_id)).or_else(|| all.iter().find(by_value));
        hit.cloned().ok_or_else(|| Failure::not_found(format!("no throttle matches '{what}' (see: throttlectl list)")))
    }

    /// Streams the manager's signals as lines (or JSON lines).
    pub async fn monitor(&self, json: bool) -> Result<(), Failure> {
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(BUS_NAME)?
            .interface(MANAGER_INTERFACE)?
            .build();
        let mut stream = zbus::MessageStream::for_match_rule(rule, &self.conn, None).await?;
        while let Some(msg) = stream.next().await {
            let msg = msg?;
            let member = msg.header().member().map(|m| m.to_string()).unwrap_or_default();
            let raw = msg.body();
            let body: Option<zbus::zvariant::Structure<'_>> = raw.deserialize().ok();
            let fields: Vec<String> =
                body.map(|b| b.fields().iter().map(|f| f.to_string()).collect()).unwrap_or_default();
            if json {
                println!("{}", serde_json::json!({ "signal": member, "args": fields }));
            } else {
                println!("{member} {}", fields.join(" "));
            }
        }
        Ok(())
    }
}

/// What went wrong, for the user, with a distinct exit code.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    msg: String,
    hint: Option<&'static str>,
}

/// Exit codes (documented in README): 1 other, 2 usage or invalid input,
/// 3 not authorized, 4 not found, 5 daemon unreachable, 6 busy (try again).
impl Failure {
    pub fn usage(msg: impl Into<String>) -> Failure {
        Failure { code: 2, msg: msg.into(), hint: None }
    }
    pub fn not_found(msg: impl Into<String>) -> Failure {
        Failure { code: 4, msg: msg.into(), hint: None }
    }
    pub fn unreachable(msg: impl Into<String>) -> Failure {
        Failure { code: 5, msg: msg.into(), hint: Some("is chadthrottled running? try: systemctl start chadthrottled") }
    }
    pub fn other(e: impl std::fmt::Display) -> Failure {
        Failure { code: 1, msg: e.to_string(), hint: None }
    }

    pub fn code(&self) -> u8 {
        self.code
    }

    pub fn report(self) -> ExitCode {
        eprintln!("throttlectl: {}", self.msg);
        if let Some(h) = self.hint {
            eprintln!("hint: {h}");
        }
        ExitCode::from(self.code)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<zbus::Error> for Failure {
    fn from(e: zbus::Error) -> Failure {
        let zbus::Error::MethodError(name, msg, _) = &e else {
            return Failure::other(e);
        };
        let text = msg.clone().unwrap_or_else(|| name.to_string());
        match Error::from(e) {
            Error::NotAuthorized(_) => Failure {
                code: 3,
                msg: text,
                hint: Some("run with sudo, or ask an admin to grant the org.chadthrottle polkit actions"),
            },
            // A refusal too: the caller's user already has its share of throttles.
            Error::QuotaExceeded(_) => Failure {
                code: 3,
                msg: text,
                hint: Some("remove one of your throttles first, or ask an admin to raise limits.per_user"),
            },
            // Not a refusal: too many checks in flight for this user just now.
            Error::Busy(_) => busy(text),
            Error::NoSuchProcess(_) | Error::NoSuchThrottle(_) => Failure::not_found(text),
            Error::InvalidArgument(_) | Error::UnknownBackend(_) | Error::BackendUnavailable(_) => Failure::usage(text),
            Error::BackendFailed(_) | Error::Internal(_) => Failure::other(text),
            // Not ours: the bus's own errors.
            Error::ZBus(e) => match e {
                zbus::Error::MethodError(name, ..) => match name.as_str() {
                    "org.freedesktop.DBus.Error.LimitsExceeded" => busy(text),
                    "org.freedesktop.DBus.Error.InvalidArgs" => Failure::usage(text),
                    "org.freedesktop.DBus.Error.ServiceUnknown" | "org.freedesktop.DBus.Error.NameHasNoOwner" => {
                        Failure::unreachable(format!("chadthrottled is not on the bus ({text})"))
                    }
                    _ => Failure::other(text),
                },
                _ => Failure::other(text),
            },
        }
    }
}

fn busy(text: String) -> Failure {
    Failure {
        code: 6,
        msg: text,
        hint: Some("the daemon is busy (too many requests from this user); try again in a moment"),
    }
}

impl From<zbus::fdo::Error> for Failure {
    fn from(e: zbus::fdo::Error) -> Failure {
        Failure::from(zbus::Error::from(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon_error(name: &str) -> Failure {
        let msg = zbus::message::Message::method_call("/", "Ping").unwrap().build(&()).unwrap();
        let name = zbus::names::OwnedErrorName::try_from(name).unwrap();
        Failure::from(zbus::Error::MethodError(name, Some("why".into()), msg))
    }

    #[test]
    fn daemon_errors_have_distinct_exit_codes() {
        let code = |name| daemon_error(name).code();
        assert_eq!(code("org.chadthrottle.Error.NotAuthorized"), 3);
        // Busy is not a refusal: the user may simply try again.
        assert_eq!(code("org.chadthrottle.Error.Busy"), 6);
        assert_eq!(code("org.freedesktop.DBus.Error.LimitsExceeded"), 6);
        assert_eq!(code("org.freedesktop.DBus.Error.InvalidArgs"), 2);
        assert_eq!(code("org.chadthrottle.Error.NoSuchThrottle"), 4);
        assert_eq!(code("org.chadthrottle.Error.Internal"), 1);
    }
}
