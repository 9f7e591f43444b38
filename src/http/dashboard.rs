//! `/dashboard/`: the operators' page (cluster status, a key browser, add-member and
//! reshard), served by every node from files embedded in the binary, so that the Docker
//! image (`FROM scratch`) and a node started anywhere carry it with nothing to install.
//!
//! The page is static: it calls the node's own JSON endpoints from the browser
//! (`/kvs/status`, the listing and key paths, the shard paths), so it needs no server-side
//! state and no template.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{guard, web, HttpRequest, HttpResponse};

use super::reply;

/// Where the dashboard lives; `/` and `/dashboard` redirect here.
pub const PATH: &str = "/dashboard/";

/// One embedded file: its path under `/dashboard/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const PAGE: &str = include_str!("../../assets/dashboard/index.html");

/// `""` is the page itself (`/dashboard/`); `index.html` names it too, for bookmarks.
static ASSETS: [Asset; 4] = [
    Asset {
        name: "",
        content_type: "text/html; charset=utf-8",
        body: PAGE,
    },
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: PAGE,
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../assets/dashboard/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../assets/dashboard/style.css"),
    },
];

/// The page loads only its own script and style and talks only to its own node: a value
/// shown in the page can never run as code, and no other site can frame the admin forms.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", read_only().to(redirect))
        .route("/dashboard", read_only().to(redirect));
    for asset in &ASSETS {
        cfg.service(
            web::resource(format!("{PATH}{}", asset.name))
                .route(read_only().to(move || serve(asset)))
                .default_service(web::to(not_allowed)),
        );
    }
}

/// GET, and HEAD for probes and `curl -I`.
fn read_only() -> actix_web::Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

async fn redirect() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, PATH))
        .finish()
}

async fn serve(asset: &'static Asset) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(asset.content_type)
        // The files change with the binary: a browser revalidates rather than keep a page
        // from before an upgrade.
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .body(asset.body)
}

async fn not_allowed(req: HttpRequest) -> HttpResponse {
    reply::method_not_allowed(req.method().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::{Method, StatusCode};
    use actix_web::test as actix_test;
    use actix_web::App;

    async fn call(method: Method, path: &str) -> actix_web::dev::ServiceResponse {
        let app = actix_test::init_service(App::new().configure(routes)).await;
        actix_test::call_service(
            &app,
            actix_test::TestRequest::default()
                .method(method)
                .uri(path)
                .to_request(),
        )
        .await
    }

    fn header_of(resp: &actix_web::dev::ServiceResponse, name: header::HeaderName) -> String {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    #[actix_web::test]
    async fn each_asset_is_served_with_its_content_type_and_no_cache() {
        let cases = [
            ("/dashboard/", "text/html; charset=utf-8", "<!doctype html>"),
            (
                "/dashboard/index.html",
                "text/html; charset=utf-8",
                "<!doctype html>",
            ),
            (
                "/dashboard/app.js",
                "text/javascript; charset=utf-8",
                "\"use strict\"",
            ),
            ("/dashboard/style.css", "text/css; charset=utf-8", "body"),
        ];
        for (path, content_type, start) in cases {
            let resp = call(Method::GET, path).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            assert_eq!(
                header_of(&resp, header::CONTENT_TYPE),
                content_type,
                "{path}"
            );
            assert_eq!(
                header_of(&resp, header::CACHE_CONTROL),
                "no-cache",
                "{path}"
            );
            assert!(header_of(&resp, header::CONTENT_SECURITY_POLICY).contains("script-src 'self'"));
            let body = actix_test::read_body(resp).await;
            let text = std::str::from_utf8(&body).unwrap();
            assert!(text.trim_start().starts_with(start), "{path}: {text:.40}");
        }
    }

    #[actix_web::test]
    async fn the_root_and_the_bare_path_redirect_to_the_page() {
        for path in ["/", "/dashboard"] {
            let resp = call(Method::GET, path).await;
            assert_eq!(resp.status(), StatusCode::FOUND, "{path}");
            assert_eq!(header_of(&resp, header::LOCATION), PATH);
        }
    }

    #[test]
    fn the_page_refers_only_to_embedded_files() {
        let page = PAGE;
        for file in ["app.js", "style.css"] {
            assert!(page.contains(&format!("\"{file}\"")), "{file} not linked");
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
    }

    #[actix_web::test]
    async fn head_is_answered_and_writes_are_not_allowed() {
        let resp = call(Method::HEAD, "/dashboard/app.js").await;
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = call(Method::POST, "/dashboard/").await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
