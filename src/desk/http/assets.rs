//! The widget, the console and their shared chat client, embedded in the
//! binary: no build step, nothing to install, and no inline script, so a
//! host's strict Content-Security-Policy keeps working.

use axum::http::header;
use axum::response::IntoResponse;

/// The chat client both sides share.
const CHAT_JS: &str = include_str!("../assets/chat.js");
/// The widget: the chat client and the launcher in one file, so one
/// script tag is all a page needs.
const WIDGET_JS: &str = concat!(
    include_str!("../assets/chat.js"),
    "\n",
    include_str!("../assets/widget.js")
);
const CONSOLE_HTML: &str = include_str!("../assets/console.html");
const CONSOLE_JS: &str = include_str!("../assets/console.js");
const DESK_CSS: &str = include_str!("../assets/desk.css");
const REPORTS_HTML: &str = include_str!("../assets/reports.html");
const REPORTS_JS: &str = include_str!("../assets/reports.js");
const REPORTS_CSS: &str = include_str!("../assets/reports.css");
const HISTORY_HTML: &str = include_str!("../assets/history.html");
const HISTORY_JS: &str = include_str!("../assets/history.js");
const HISTORY_CSS: &str = include_str!("../assets/history.css");

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

fn asset(body: &'static str, content_type: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `GET widget.js`.
pub async fn widget() -> impl IntoResponse {
    asset(WIDGET_JS, JS)
}

/// `GET assets/chat.js`.
pub async fn chat() -> impl IntoResponse {
    asset(CHAT_JS, JS)
}

/// `GET assets/console.js`.
pub async fn console_js() -> impl IntoResponse {
    asset(CONSOLE_JS, JS)
}

/// `GET assets/desk.css`.
pub async fn css() -> impl IntoResponse {
    asset(DESK_CSS, CSS)
}

/// `GET assets/reports.js`.
pub async fn reports_js() -> impl IntoResponse {
    asset(REPORTS_JS, JS)
}

/// `GET assets/reports.css`.
pub async fn reports_css() -> impl IntoResponse {
    asset(REPORTS_CSS, CSS)
}

/// `GET agent/reports`: the Reports page, under the console's policy (its
/// charts are SVG its own script draws; nothing loads from elsewhere).
pub async fn reports() -> impl IntoResponse {
    page(REPORTS_HTML)
}

/// `GET agent/history`: the page where a supervisor uploads past
/// conversations and reviews the FAQ entries suggested from them.
pub async fn history() -> impl IntoResponse {
    page(HISTORY_HTML)
}

/// `GET assets/history.js`.
pub async fn history_js() -> impl IntoResponse {
    asset(HISTORY_JS, JS)
}

/// `GET assets/history.css`.
pub async fn history_css() -> impl IntoResponse {
    asset(HISTORY_CSS, CSS)
}

/// `GET agent`: the console page. It loads only its own scripts and
/// styles, so an injected `<script>` would not run even if escaping failed.
pub async fn console() -> impl IntoResponse {
    page(CONSOLE_HTML)
}

/// A page of the console's, with its Content-Security-Policy.
fn page(html: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HTML),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
}
