//! The daemon's API as seen from the client: proxies, lookups and the
//! failures a user sees, each with a distinct exit code.
use std::{
    process::ExitCode,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use futures_util::StreamExt;
use throttle_api::{Error, BUS_NAME, MANAGER_INTERFACE};
pub use throttle_api::{ManagerProxy, ThrottleProxy};
use zbus::{
    proxy::CacheProperties,
    zvariant::{OwnedObjectPath, Value},
    Connection,
};

/// The method timeout of the last connection, for the timeout's message.
static TIMEOUT_SECS: AtomicU64 = AtomicU64::new(crate::cli::DEFAULT_TIMEOUT_SECS);

/// What zbus returns when a method call outlives the connection's timeout.
fn is_timeout(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::InputOutput(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

fn timed_out() -> zbus::Error {
    zbus::Error::InputOutput(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out").into())
}

/// One throttle as the CLI shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ThrottleView {
    #[serde(skip)]
    pub path: OwnedObjectPath,
    pub id: u32,
    pub kind: String,
    pub target: String,
    /// Blocks its processes' traffic outright (`down` and `up` are then 0).
    pub blocked: bool,
    /// Bytes per second; 0 = unlimited.
    pub down: u64,
    pub up: u64,
    pub down_backend: String,
    pub up_backend: String,
    pub pids: Vec<u32>,
    /// "runtime", "held", or the rules file it came from.
    pub origin: String,
    /// "active", or "failed" (saved, not applied now: see status_detail).
    pub status: String,
    pub status_detail: String,
    #[serde(flatten)]
    pub plan: PlanView,
    /// low, normal, high or critical.
    pub priority: String,
    /// The ids of the caps (`user`, `all` throttles) over its processes.
    pub caps: Vec<u32>,
}

/// A throttle's quota and schedule.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PlanView {
    /// Its data cap ("5G/month"), "" without one.
    pub quota: String,
    pub quota_bytes: u64,
    /// `None` when the caller may not see the throttle's traffic.
    pub quota_used: Option<u64>,
    pub quota_exceeded: bool,
    pub quota_then: String,
    /// Unix time of the quota's next reset (0 without a quota).
    pub quota_resets_at: i64,
    /// Its windows, "" without a schedule; whether one is open now.
    pub schedule: String,
    pub schedule_active: bool,
    /// Bytes per second outside the windows (0: nothing applies there).
    pub otherwise: u64,
}

pub struct Client {
    pub conn: Connection,
    pub manager: ManagerProxy<'static>,
    timeout: Duration,
}

impl Client {
    /// A connection on which every method call gives up after `timeout`
    /// (and so does connecting); proxies read properties afresh, each read
    /// a method call under the same timeout.
    pub async fn connect(bus: &str, timeout: Duration) -> Result<Client, Failure> {
        TIMEOUT_SECS.store(timeout.as_secs(), Ordering::Relaxed);
        let builder = match bus {
            "system" => zbus::connection::Builder::system(),
            "session" => zbus::connection::Builder::session(),
            addr => zbus::connection::Builder::address(addr),
        };
        let conn = match builder {
            Ok(b) => match tokio::time::timeout(timeout, b.method_timeout(timeout).build()).await {
                Ok(r) => r,
                Err(_) => Err(timed_out()),
            },
            Err(e) => Err(e),
        }
        .map_err(|e| match is_timeout(&e) {
            true => Failure::timeout(),
            false => Failure::unreachable(format!("cannot reach the {bus} bus: {e}")),
        })?;
        let manager = ManagerProxy::builder(&conn).cache_properties(CacheProperties::No).build().await?;
        Ok(Client { conn, manager, timeout })
    }

    /// A call under the timeout. zbus applies the connection's method
    /// timeout to plain calls only, not to calls with flags (those that
    /// allow interactive authorization: every change), so those go here.
    pub async fn bounded<T>(&self, call: impl std::future::Future<Output = zbus::Result<T>>) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map_err(Failure::from),
            Err(_) => Err(Failure::timeout()),
        }
    }

    pub async fn throttle(&self, path: &OwnedObjectPath) -> Result<ThrottleView, Failure> {
        let p = ThrottleProxy::builder(&self.conn)
            .path(path.clone())?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        Ok(ThrottleView {
            path: path.clone(),
            id: p.id().await?,
            kind: p.kind().await?,
            target: p.target().await?,
            // A daemon older than blocking blocks nothing.
            blocked: p.blocked().await.unwrap_or(false),
            down: p.down_limit().await?,
            up: p.up_limit().await?,
            down_backend: p.down_backend().await?,
            up_backend: p.up_backend().await?,
            pids: p.pids().await?,
            origin: p.origin().await.unwrap_or_else(|_| "runtime".into()),
            // A daemon older than these properties has only active throttles.
            status: p.status().await.unwrap_or_else(|_| "active".into()),
            status_detail: p.status_detail().await.unwrap_or_default(),
            plan: plan(&p).await,
            // A daemon older than priorities has every throttle at normal.
            priority: p.priority().await.unwrap_or_else(|_| "normal".into()),
            // A daemon older than caps has none.
            caps: p
                .caps()
                .await
                .unwrap_or_default()
                .iter()
                .filter_map(|c| throttle_api::throttle_id(c.as_str()))
                .collect(),
        })
    }
}

/// A daemon older than quotas and schedules has neither.
async fn plan(p: &ThrottleProxy<'_>) -> PlanView {
    PlanView {
        quota: p.quota().await.unwrap_or_default(),
        quota_bytes: p.quota_bytes().await.unwrap_or_default(),
        quota_used: p.quota_used().await.ok(),
        quota_exceeded: p.quota_exceeded().await.unwrap_or_default(),
        quota_then: p.quota_then().await.unwrap_or_default(),
        quota_resets_at: p.quota_resets_at().await.unwrap_or_default(),
        schedule: p.schedule().await.unwrap_or_default(),
        schedule_active: p.schedule_active().await.unwrap_or(true),
        otherwise: p.otherwise().await.unwrap_or_default(),
    }
}

impl Client {
    pub async fn throttles(&self) -> Result<Vec<ThrottleView>, Failure> {
        let mut out = Vec::new();
        for path in self.bounded(self.manager.list_throttles()).await? {
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
        let by_value = |t: &&ThrottleView| t.target == what || (what == "all" && t.kind == "all");
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
            let fields = body.map(|b| b.fields().to_vec()).unwrap_or_default();
            if json {
                let args: Vec<serde_json::Value> = fields.iter().map(json_of).collect();
                println!("{}", serde_json::json!({ "signal": member, "args": args }));
            } else {
                let text: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
                println!("{member} {}", text.join(" "));
            }
        }
        Ok(())
    }
}

/// A D-Bus value as plain JSON: numbers, strings (object paths and
/// signatures too), booleans, arrays, objects (dicts; keys as text) and
/// arrays again for structures; a variant is its content.
pub fn json_of(v: &Value<'_>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::U8(n) => J::from(*n),
        Value::Bool(b) => J::from(*b),
        Value::I16(n) => J::from(*n),
        Value::U16(n) => J::from(*n),
        Value::I32(n) => J::from(*n),
        Value::U32(n) => J::from(*n),
        Value::I64(n) => J::from(*n),
        Value::U64(n) => J::from(*n),
        // NaN and infinities have no JSON number: null.
        Value::F64(n) => J::from(*n),
        Value::Str(s) => J::from(s.as_str()),
        Value::Signature(s) => J::from(s.to_string()),
        Value::ObjectPath(p) => J::from(p.as_str()),
        Value::Value(inner) => json_of(inner),
        Value::Array(a) => J::Array(a.inner().iter().map(json_of).collect()),
        Value::Dict(d) => J::Object(
            d.iter()
                .map(|(k, v)| {
                    let key = match json_of(k) {
                        J::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, json_of(v))
                })
                .collect(),
        ),
        Value::Structure(s) => J::Array(s.fields().iter().map(json_of).collect()),
        // File descriptors (and GVariant's maybe) never come from the daemon.
        other => J::from(other.to_string()),
    }
}

/// What went wrong, for the user, with a distinct exit code.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    msg: String,
    hint: Option<&'static str>,
    /// The D-Bus error name, when the failure is a D-Bus error reply.
    name: Option<String>,
    /// No answer within --timeout (exit code 5 too, but not "not running").
    timed_out: bool,
    /// More top-level keys of the JSON error, e.g. "running": false.
    extra: serde_json::Map<String, serde_json::Value>,
}

/// Exit codes (documented in README): 1 other, 2 usage or invalid input,
/// 3 not authorized, 4 not found, 5 daemon unreachable, 6 busy (try again).
impl Failure {
    fn new(code: u8, msg: impl Into<String>, hint: Option<&'static str>) -> Failure {
        Failure { code, msg: msg.into(), hint, name: None, timed_out: false, extra: serde_json::Map::new() }
    }
    pub fn usage(msg: impl Into<String>) -> Failure {
        Failure::new(2, msg, None)
    }
    pub fn not_found(msg: impl Into<String>) -> Failure {
        Failure::new(4, msg, None)
    }
    pub fn unreachable(msg: impl Into<String>) -> Failure {
        Failure::new(5, msg, Some("is chadthrottled running? try: systemctl start chadthrottled"))
    }
    /// No answer within --timeout: the daemon (or the bus) is stuck or
    /// overloaded; a change may or may not have been made.
    pub fn timeout() -> Failure {
        let secs = TIMEOUT_SECS.load(Ordering::Relaxed);
        let mut f = Failure::new(
            5,
            format!("timed out: no answer from chadthrottled within {secs} s (--timeout)"),
            Some("the daemon or the bus is stuck or overloaded: see systemctl status chadthrottled"),
        );
        f.timed_out = true;
        f
    }
    pub fn other(e: impl std::fmt::Display) -> Failure {
        Failure::new(1, e.to_string(), None)
    }

    fn named(mut self, name: &str) -> Failure {
        self.name = Some(name.to_string());
        self
    }

    /// Adds a top-level key to the JSON form.
    pub fn with_json(mut self, key: &str, value: serde_json::Value) -> Failure {
        self.extra.insert(key.to_string(), value);
        self
    }

    pub fn code(&self) -> u8 {
        self.code
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// `{"error": {"code", "message", "name"}}` (and any `with_json` keys);
    /// name is null unless the failure is a D-Bus error reply.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = self.extra.clone();
        v.insert("error".into(), serde_json::json!({ "code": self.code, "message": self.msg, "name": self.name }));
        serde_json::Value::Object(v)
    }

    /// The message (and hint, unless quiet) on stderr; with `json`, first
    /// the JSON error on stdout. Returns the exit code.
    pub fn report(self, json: bool, quiet: bool) -> ExitCode {
        if json {
            println!("{}", self.to_json());
        }
        eprintln!("throttlectl: {}", self.msg);
        if let Some(h) = self.hint.filter(|_| !quiet) {
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
        if is_timeout(&e) {
            return Failure::timeout();
        }
        let zbus::Error::MethodError(name, msg, _) = &e else {
            return Failure::other(e);
        };
        let name = name.to_string();
        let text = msg.clone().unwrap_or_else(|| name.clone());
        let f = match Error::from(e) {
            Error::NotAuthorized(_) => Failure::new(
                3,
                text,
                Some("run with sudo, or ask an admin to grant the org.chadthrottle polkit actions"),
            ),
            // A refusal too: the caller's user already has its share of throttles.
            Error::QuotaExceeded(_) => Failure::new(
                3,
                text,
                Some("remove one of your throttles first, or ask an admin to raise limits.per_user"),
            ),
            // Not a refusal: too many checks in flight for this user just now.
            Error::Busy(_) => busy(text),
            Error::NoSuchProcess(_) | Error::NoSuchThrottle(_) => Failure::not_found(text),
            Error::InvalidArgument(_) | Error::UnknownBackend(_) | Error::BackendUnavailable(_) => Failure::usage(text),
            Error::BackendFailed(_) | Error::NotSupported(_) | Error::Internal(_) => Failure::other(text),
            // Not ours: the bus's own errors.
            Error::ZBus(e) => match e {
                zbus::Error::MethodError(name, ..) => match name.as_str() {
                    "org.freedesktop.DBus.Error.LimitsExceeded" => busy(text),
                    "org.freedesktop.DBus.Error.InvalidArgs" => Failure::usage(text),
                    "org.freedesktop.DBus.Error.ServiceUnknown" | "org.freedesktop.DBus.Error.NameHasNoOwner" => {
                        Failure::unreachable(format!("chadthrottled is not on the bus ({text})"))
                    }
                    "org.freedesktop.DBus.Error.NoReply" | "org.freedesktop.DBus.Error.Timeout" => Failure::timeout(),
                    _ => Failure::other(text),
                },
                _ => Failure::other(text),
            },
        };
        f.named(&name)
    }
}

fn busy(text: String) -> Failure {
    Failure::new(6, text, Some("the daemon is busy (too many requests from this user); try again in a moment"))
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
        assert_eq!(code("org.freedesktop.DBus.Error.ServiceUnknown"), 5);
        assert_eq!(code("org.freedesktop.DBus.Error.NoReply"), 5);
    }

    #[test]
    fn json_errors_carry_code_message_and_name() {
        let v = daemon_error("org.chadthrottle.Error.NoSuchThrottle").to_json();
        assert_eq!(
            v,
            serde_json::json!({ "error": { "code": 4, "message": "why",
            "name": "org.chadthrottle.Error.NoSuchThrottle" } })
        );
        let v = Failure::usage("give --up").with_json("running", false.into()).to_json();
        assert_eq!(
            v,
            serde_json::json!({ "running": false, "error": { "code": 2, "message": "give --up", "name": null } })
        );
    }

    #[test]
    fn a_method_timeout_is_its_own_failure() {
        let f = Failure::from(timed_out());
        assert_eq!(f.code(), 5);
        assert!(f.timed_out() && f.to_string().starts_with("timed out: no answer from chadthrottled within"), "{f}");
        assert!(!Failure::unreachable("gone").timed_out());
    }

    #[test]
    fn dbus_values_become_plain_json() {
        use std::collections::HashMap;

        use zbus::zvariant::{ObjectPath, StructureBuilder};
        let path = ObjectPath::try_from("/org/chadthrottle/throttles/3").unwrap();
        assert_eq!(json_of(&Value::from(path)), serde_json::json!("/org/chadthrottle/throttles/3"));
        assert_eq!(json_of(&Value::from("ebpf")), serde_json::json!("ebpf"));
        assert_eq!(json_of(&Value::U64(1 << 40)), serde_json::json!(1u64 << 40));
        assert_eq!(json_of(&Value::I32(-3)), serde_json::json!(-3));
        assert_eq!(json_of(&Value::Bool(true)), serde_json::json!(true));
        assert_eq!(json_of(&Value::F64(0.5)), serde_json::json!(0.5));
        assert_eq!(json_of(&Value::from(vec![1u32, 2])), serde_json::json!([1, 2]));
        assert_eq!(json_of(&Value::Value(Box::new(Value::U8(7)))), serde_json::json!(7));
        let dict: HashMap<&str, Value<'_>> = [("down", Value::U64(1024)), ("name", Value::from("x"))].into();
        assert_eq!(json_of(&Value::from(dict)), serde_json::json!({ "down": 1024, "name": "x" }));
        let keyed: HashMap<u32, &str> = [(5, "five")].into();
        assert_eq!(json_of(&Value::from(keyed)), serde_json::json!({ "5": "five" }));
        let s = StructureBuilder::new().add_field("up").add_field(2u32).build().unwrap();
        assert_eq!(json_of(&Value::from(s)), serde_json::json!(["up", 2]));
    }
}
