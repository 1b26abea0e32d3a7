//! `type = "rbd"` backends: a Ceph RBD image through librbd. The keys are
//! checked here whether or not this build has RBD support, so a config that
//! names an image fails on a build without it with a message that says so,
//! not with an unknown key.
//!
//! ```toml
//! [[backend]]
//! name = "rbd0"
//! type = "rbd"
//! pool = "rbd"
//! image = "vm-disk-1"
//! namespace = "tenant-a"          # optional
//! snapshot = "golden"             # optional: the LUN is read-only
//! ceph_conf = "/etc/ceph/ceph.conf"
//! client_id = "admin"             # optional, default admin
//! keyring = "/etc/ceph/ceph.client.admin.keyring"   # optional
//! op_timeout = 30                 # seconds, optional
//! ```

use backends::BackendSpec;
use toml::Spanned;

use super::{ConfigError, Ctx, RawBackend};

/// Default seconds before a RADOS operation fails instead of waiting for an
/// unreachable OSD or monitor: long enough to ride out an OSD restart, short
/// enough that a SCSI initiator's own timeout (30 s in Linux) is not the first
/// to fire by much.
pub const DEFAULT_OP_TIMEOUT: u32 = 30;

/// Refuses RBD keys on a backend of another type.
pub fn reject_keys(cx: &Ctx<'_>, b: &RawBackend) -> Result<(), ConfigError> {
    let spans = [
        ("pool", b.pool.as_ref().map(Spanned::span)),
        ("image", b.image.as_ref().map(Spanned::span)),
        ("namespace", b.namespace.as_ref().map(Spanned::span)),
        ("snapshot", b.snapshot.as_ref().map(Spanned::span)),
        ("ceph_conf", b.ceph_conf.as_ref().map(Spanned::span)),
        ("client_id", b.client_id.as_ref().map(Spanned::span)),
        ("keyring", b.keyring.as_ref().map(Spanned::span)),
        ("op_timeout", b.op_timeout.as_ref().map(Spanned::span)),
    ];
    for (key, span) in spans {
        if let Some(span) = span {
            return cx.err(
                span,
                format!(
                    "backend {:?}: `{key}` is only for type = \"rbd\"",
                    b.name.get_ref()
                ),
            );
        }
    }
    Ok(())
}

/// A Ceph name (pool, image, namespace, snapshot, client id): librbd takes
/// them as C strings, and Ceph refuses '/' and '@' in them.
fn check_name(
    cx: &Ctx<'_>,
    b: &RawBackend,
    v: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    let s = v.get_ref();
    if s.is_empty() || s.len() > 255 || s.contains(['\0', '/', '@']) {
        return cx.err(
            v.span(),
            format!(
                "backend {:?}: {key} {s:?} must be 1 to 255 bytes without '/', '@' or NUL",
                b.name.get_ref()
            ),
        );
    }
    Ok(s.clone())
}

fn required<'a>(
    cx: &Ctx<'_>,
    b: &'a RawBackend,
    v: &'a Option<Spanned<String>>,
    key: &str,
) -> Result<&'a Spanned<String>, ConfigError> {
    match v {
        Some(v) => Ok(v),
        None => cx.err(
            b.name.span(),
            format!(
                "backend {:?}: an rbd backend needs `{key}`",
                b.name.get_ref()
            ),
        ),
    }
}

/// The checked keys of an rbd backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdKeys {
    pub pool: String,
    pub image: String,
    pub namespace: Option<String>,
    pub snapshot: Option<String>,
    pub ceph_conf: Option<std::path::PathBuf>,
    pub client_id: String,
    pub keyring: Option<std::path::PathBuf>,
    pub op_timeout: u32,
    pub read_only: bool,
}

pub fn keys(cx: &Ctx<'_>, b: &RawBackend) -> Result<RbdKeys, ConfigError> {
    let pool = check_name(cx, b, required(cx, b, &b.pool, "pool")?, "pool")?;
    let image = check_name(cx, b, required(cx, b, &b.image, "image")?, "image")?;
    let opt = |v: &Option<Spanned<String>>, key| {
        v.as_ref().map(|v| check_name(cx, b, v, key)).transpose()
    };
    let namespace = opt(&b.namespace, "namespace")?;
    let snapshot = opt(&b.snapshot, "snapshot")?;
    let client_id = opt(&b.client_id, "client_id")?.unwrap_or_else(|| "admin".into());
    let op_timeout = match &b.op_timeout {
        None => DEFAULT_OP_TIMEOUT,
        Some(t) if !(1..=3600).contains(t.get_ref()) => {
            return cx.err(
                t.span(),
                format!(
                    "backend {:?}: op_timeout must be 1 to 3600 seconds",
                    b.name.get_ref()
                ),
            )
        }
        Some(t) => *t.get_ref(),
    };
    if b.engine.is_some() || b.direct {
        return cx.err(
            b.name.span(),
            format!(
                "backend {:?}: `engine` and `direct` are for files",
                b.name.get_ref()
            ),
        );
    }
    Ok(RbdKeys {
        pool,
        image,
        namespace,
        // A snapshot cannot be written.
        read_only: b.read_only || snapshot.is_some(),
        snapshot,
        ceph_conf: b.ceph_conf.as_ref().map(|p| p.get_ref().clone()),
        client_id,
        keyring: b.keyring.as_ref().map(|p| p.get_ref().clone()),
        op_timeout,
    })
}

#[cfg(not(feature = "rbd"))]
pub fn spec(cx: &Ctx<'_>, b: &RawBackend) -> Result<BackendSpec, ConfigError> {
    keys(cx, b)?;
    cx.err(
        b.name.span(),
        format!(
            "backend {:?}: this oxtarget was built without RBD support (cargo feature `rbd`)",
            b.name.get_ref()
        ),
    )
}

#[cfg(feature = "rbd")]
pub fn spec(cx: &Ctx<'_>, b: &RawBackend) -> Result<BackendSpec, ConfigError> {
    let k = keys(cx, b)?;
    // One figure for the admin: connecting, monitor and OSD operations each
    // give up after it.
    let t = std::time::Duration::from_secs(u64::from(k.op_timeout));
    Ok(BackendSpec::Rbd {
        pool: k.pool,
        image: k.image,
        namespace: k.namespace,
        snapshot: k.snapshot,
        read_only: k.read_only,
        ceph_conf: k.ceph_conf,
        client_id: Some(k.client_id),
        keyring: k.keyring,
        timeouts: backends::RbdTimeouts {
            connect: t,
            mon_op: t,
            osd_op: t,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    fn err_of(text: &str) -> String {
        match parse("t.toml", text) {
            Ok(_) => panic!("config accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const RBD: &str = "[[backend]]\nname = \"r\"\ntype = \"rbd\"\n";

    #[test]
    fn rbd_keys_are_checked() {
        let e = err_of(&format!("{RBD}image = \"i\"\n"));
        assert!(e.contains("needs `pool`"), "{e}");
        let e = err_of(&format!("{RBD}pool = \"p\"\nimage = \"a/b\"\n"));
        assert!(e.starts_with("t.toml:5:") && e.contains("image"), "{e}");
        let e = err_of(&format!(
            "{RBD}pool = \"p\"\nimage = \"i\"\nop_timeout = 0\n"
        ));
        assert!(e.contains("op_timeout"), "{e}");
        let e = err_of(&format!(
            "{RBD}pool = \"p\"\nimage = \"i\"\nsize = \"1G\"\n"
        ));
        assert!(e.contains("comes from the image"), "{e}");
        let e = err_of("[[backend]]\nname = \"m\"\ntype = \"ram\"\nsize = \"1M\"\npool = \"p\"\n");
        assert!(
            e.starts_with("t.toml:5:") && e.contains("`pool` is only for type = \"rbd\""),
            "{e}"
        );
    }

    #[test]
    fn rbd_keys_are_read() {
        use super::super::Ctx;
        let text =
            format!("{RBD}pool = \"p\"\nimage = \"i\"\nsnapshot = \"s\"\nceph_conf = \"/c\"\n");
        #[derive(serde::Deserialize)]
        struct Doc {
            backend: Vec<super::RawBackend>,
        }
        let doc: Doc = toml::from_str(&text).unwrap();
        let cx = Ctx {
            path: "t.toml",
            text: &text,
        };
        let k = super::keys(&cx, &doc.backend[0]).unwrap();
        assert_eq!((k.pool.as_str(), k.image.as_str()), ("p", "i"));
        assert_eq!(k.client_id, "admin");
        assert_eq!(k.op_timeout, super::DEFAULT_OP_TIMEOUT);
        // A snapshot is read-only whatever the config says.
        assert!(k.read_only);
    }

    #[cfg(not(feature = "rbd"))]
    #[test]
    fn without_the_feature_an_image_is_refused_by_name() {
        let e = err_of(&format!("{RBD}pool = \"p\"\nimage = \"i\"\n"));
        assert!(e.contains("built without RBD support"), "{e}");
    }
}
