//! `org.freedesktop.DBus.ObjectManager` at `/org/chadthrottle`. zbus's own
//! lists every node below it, with the empty `/org/chadthrottle/throttles`
//! between us and the throttles; this one lists only the throttle objects.
//! zbus knows an object manager by its interface name, so it still sends
//! `InterfacesAdded` and `InterfacesRemoved` for this one.
use std::{borrow::Cow, collections::HashMap, sync::Arc};

use zbus::{
    fdo, interface,
    names::{InterfaceName, OwnedInterfaceName},
    object_server::{Interface, SignalEmitter},
    zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value},
    Connection, ObjectServer,
};

use super::{args, authorize, strict::Strict, throttle::ThrottleIface};
use crate::manager::Manager;

type Managed = HashMap<OwnedObjectPath, HashMap<OwnedInterfaceName, HashMap<String, OwnedValue>>>;

pub struct Objects {
    pub mgr: Arc<Manager>,
}

#[interface(name = "org.freedesktop.DBus.ObjectManager")]
impl Objects {
    /// Every throttle object with its properties, as GetAll gives them to a
    /// caller without the right to see traffic (there is no one caller to
    /// ask about, as for InterfacesAdded).
    async fn get_managed_objects(
        &self,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<Managed> {
        let ids = authorize::read(&self.mgr, |r| Ok(r.ids())).await.map_err(|e| fdo::Error::Failed(e.to_string()))?;
        let mut out = Managed::new();
        for id in ids {
            let path = ObjectPath::try_from(args::throttle_path(id)).map_err(zbus::Error::from)?;
            // Not served yet, or gone since the list was read.
            let Ok(iface) = server.interface::<_, Strict<ThrottleIface>>(&path).await else { continue };
            let emitter = SignalEmitter::new(conn, path.clone())?;
            let props = iface.get().await.get_all(server, conn, None, &emitter).await?;
            let name = OwnedInterfaceName::from(<Strict<ThrottleIface> as Interface>::name());
            out.insert(path.into(), HashMap::from([(name, props)]));
        }
        Ok(out)
    }

    /// An object was added, with its interfaces and their properties.
    #[zbus(signal)]
    async fn interfaces_added(
        emitter: &SignalEmitter<'_>,
        object_path: ObjectPath<'_>,
        interfaces_and_properties: HashMap<InterfaceName<'_>, HashMap<&str, Value<'_>>>,
    ) -> zbus::Result<()>;

    /// An object was removed, or lost the interfaces listed.
    #[zbus(signal)]
    async fn interfaces_removed(
        emitter: &SignalEmitter<'_>,
        object_path: ObjectPath<'_>,
        interfaces: Cow<'_, [InterfaceName<'_>]>,
    ) -> zbus::Result<()>;
}
