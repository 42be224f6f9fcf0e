//! Static assets compiled into the binary and served same-origin, so the
//! Content-Security-Policy can forbid every other source (`web::CSP`).

use std::sync::OnceLock;

use bytes::Bytes;
use hyper::header;

use super::Ctx;
use super::reply::{Reply, WebError, WebResult};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/style.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/icon.svg"),
    },
];

/// A short digest of all assets: pages link `?v=VERSION`, so a new build's
/// assets are fetched and old ones may be cached for good.
pub fn version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for a in ASSETS {
            ctx.update(a.body);
        }
        crate::firmware::sha256_hex(&ctx.finish().as_ref()[..6])
    })
}

pub fn serve(ctx: &mut Ctx<'_>) -> WebResult {
    let name = ctx.param("name");
    let a = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| WebError::not_found(format!("no asset {name}")))?;
    Ok(Reply {
        status: hyper::StatusCode::OK,
        content_type: a.content_type,
        body: Bytes::from_static(a.body),
        headers: vec![(header::CACHE_CONTROL, "public, max-age=31536000, immutable".to_string())],
    })
}
