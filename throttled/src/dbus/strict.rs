//! The standard D-Bus errors zbus's generated dispatch does not give: a
//! call whose arguments have the wrong signature gets
//! `org.freedesktop.DBus.Error.InvalidArgs` (zbus answers
//! `org.freedesktop.zbus.Error`), and setting a read-only property
//! `PropertyReadOnly` (zbus answers `UnknownProperty`). Both are checked
//! against the interface's own introspection, so they cannot drift from
//! it; everything else goes straight to the interface.
use std::{
    collections::{HashMap, HashSet},
    fmt::Write,
    ops::Deref,
    sync::{Arc, LazyLock, Mutex},
};

use zbus::{
    fdo,
    message::{Header, Message},
    names::{InterfaceName, MemberName},
    object_server::{DispatchResult2, Interface, SignalEmitter},
    zvariant::{OwnedValue, Value},
    Connection, ObjectServer,
};

/// What the introspection says: each method's input signature, and which
/// properties exist but cannot be set.
#[derive(Debug, Default, PartialEq)]
struct Shape {
    methods: HashMap<String, String>,
    read_only: HashSet<String>,
}

/// An interface with strict argument and property checks.
pub struct Strict<I> {
    inner: I,
    shape: Arc<Shape>,
}

impl<I: Interface> Strict<I> {
    /// Reads the interface's introspection once per interface name (a
    /// throttle object is made per throttle).
    pub fn new(inner: I) -> Self {
        static SHAPES: LazyLock<Mutex<HashMap<String, Arc<Shape>>>> = LazyLock::new(Mutex::default);
        let mut shapes = SHAPES.lock().unwrap_or_else(|p| p.into_inner());
        let shape = shapes.entry(I::name().to_string()).or_insert_with(|| {
            let mut xml = String::new();
            inner.introspect_to_writer(&mut xml, 0);
            Arc::new(parse(&xml))
        });
        Strict { shape: shape.clone(), inner }
    }
}

impl<I> Deref for Strict<I> {
    type Target = I;
    fn deref(&self) -> &I {
        &self.inner
    }
}

/// The value of `key="…"` in one tag.
fn attr<'a>(tag: &'a str, key: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {key}=\""))? + key.len() + 3;
    tag[start..].split('"').next()
}

/// At most 64 characters of what a caller sent, for an error message.
fn clip(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Reads the tags of zbus's introspection of one interface (comments
/// skipped).
fn parse(xml: &str) -> Shape {
    let mut shape = Shape::default();
    let mut method: Option<String> = None;
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        rest = &rest[open..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |end| &after[end + 3..]);
            continue;
        }
        let Some(close) = rest.find('>') else { break };
        let tag = &rest[..=close];
        rest = &rest[close + 1..];
        if tag.starts_with("<method ") {
            let name = attr(tag, "name").unwrap_or_default().to_string();
            shape.methods.insert(name.clone(), String::new());
            method = (!tag.ends_with("/>")).then_some(name);
        } else if tag.starts_with("</method") {
            method = None;
        } else if tag.starts_with("<arg ") && attr(tag, "direction") != Some("out") {
            if let (Some(m), Some(ty)) = (&method, attr(tag, "type")) {
                shape.methods.entry(m.clone()).or_default().push_str(ty);
            }
        } else if tag.starts_with("<property ") && attr(tag, "access") == Some("read") {
            shape.read_only.insert(attr(tag, "name").unwrap_or_default().to_string());
        }
    }
    shape
}

#[zbus::export::async_trait::async_trait]
impl<I: Interface> Interface for Strict<I> {
    fn name() -> InterfaceName<'static> {
        I::name()
    }

    fn spawn_tasks_for_methods(&self) -> bool {
        self.inner.spawn_tasks_for_methods()
    }

    async fn get(
        &self,
        property_name: &str,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<fdo::Result<OwnedValue>> {
        self.inner.get(property_name, server, connection, header, emitter).await
    }

    async fn get_all(
        &self,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> fdo::Result<HashMap<String, OwnedValue>> {
        self.inner.get_all(server, connection, header, emitter).await
    }

    fn set<'call>(
        &'call self,
        property_name: &'call str,
        value: &'call Value<'_>,
        server: &'call ObjectServer,
        connection: &'call Connection,
        header: Option<&'call Header<'_>>,
        emitter: &'call SignalEmitter<'_>,
    ) -> DispatchResult2<'call> {
        match self.inner.set(property_name, value, server, connection, header, emitter) {
            DispatchResult2::NotFound if self.shape.read_only.contains(property_name) => {
                let msg = format!("property {property_name} is read-only");
                DispatchResult2::Async(Box::pin(async move { Err(fdo::Error::PropertyReadOnly(msg)) }))
            }
            other => other,
        }
    }

    async fn set_mut(
        &mut self,
        property_name: &str,
        value: &Value<'_>,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<fdo::Result<()>> {
        self.inner.set_mut(property_name, value, server, connection, header, emitter).await
    }

    fn call<'call>(
        &'call self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult2<'call> {
        if let Some(want) = self.shape.methods.get(name.as_str()) {
            let got = msg.body().signature().to_string_no_parens();
            if got != *want {
                let why = format!("Signature ({}) is wrong: {name} takes ({want})", clip(&got));
                return DispatchResult2::Async(Box::pin(async move { Err(fdo::Error::InvalidArgs(why)) }));
            }
        }
        self.inner.call(server, connection, msg, name)
    }

    fn call_mut<'call>(
        &'call mut self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult2<'call> {
        self.inner.call_mut(server, connection, msg, name)
    }

    fn introspect_to_writer(&self, writer: &mut dyn Write, level: usize) {
        self.inner.introspect_to_writer(writer, level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_methods_and_read_only_properties() {
        let xml = r#"<interface name="x.Y">
  <!--
   A comment with <method name="Fake"> in it.
   -->
  <method name="Limit">
    <arg name="kind" type="s" direction="in"/>
    <arg name="options" type="a{sv}" direction="in"/>
    <arg type="o" direction="out"/>
  </method>
  <method name="Reload">
  </method>
  <method name="Ping"/>
  <signal name="Added">
    <arg name="path" type="o"/>
  </signal>
  <property name="Version" type="s" access="read"/>
  <property name="Speed" type="t" access="readwrite"/>
</interface>"#;
        let s = parse(xml);
        let m: Vec<(&str, &str)> = {
            let mut v: Vec<_> = s.methods.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            v.sort();
            v
        };
        assert_eq!(m, [("Limit", "sa{sv}"), ("Ping", ""), ("Reload", "")]);
        assert_eq!(s.read_only, HashSet::from(["Version".to_string()]));
    }
}
