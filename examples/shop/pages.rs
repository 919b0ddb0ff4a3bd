//! The shop's pages: the products, one page each, a login form and the
//! shopper's orders. Every page is one template with the desk's script tag
//! ([`support::WIDGET`]) and no inline script, under a strict
//! Content-Security-Policy.

use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use crate::shop::{Shop, ShopError, Shopper, SESSION_COOKIE, SESSION_SECS};
use crate::support;

const LAYOUT: &str = include_str!("assets/layout.html");
const LOGIN: &str = include_str!("assets/login.html");
const STYLE: &str = include_str!("assets/style.css");

/// Scripts and styles from the shop's own origin only: an injected
/// `<script>` would not run even if escaping failed somewhere. The desk's
/// socket is on the same origin too.
const CSP: &str = "default-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The shop's routes.
pub fn routes(shop: Shop) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/products/{sku}", get(product))
        .route("/login", get(login_form).post(log_in))
        .route("/logout", post(log_out))
        .route("/orders", get(orders))
        .route("/style.css", get(style))
        .with_state(shop)
}

/// `GET /`: the catalogue.
async fn home(State(shop): State<Shop>, headers: HeaderMap) -> Result<Response, ShopError> {
    let who = shop.shopper(&headers).await?;
    let mut body = String::from("<h1>Products</h1>\n<ul class=\"shop-products\">\n");
    for p in shop.products().await? {
        body += &format!(
            "<li><a href=\"/products/{sku}\"><strong>{name}</strong></a>\
             <span>{blurb}</span><span class=\"shop-price\">{price}</span></li>\n",
            sku = escape(&p.sku),
            name = escape(&p.name),
            blurb = escape(&p.blurb),
            price = dollars(p.price_cents),
        );
    }
    body += "</ul>";
    Ok(page(StatusCode::OK, "Products", who.as_ref(), &body))
}

/// `GET /products/{sku}`: one product, or a 404 page.
async fn product(
    State(shop): State<Shop>,
    Path(sku): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ShopError> {
    let who = shop.shopper(&headers).await?;
    let Some(p) = shop.product(&sku).await? else {
        let body =
            "<h1>Not found</h1><p>We have no such product. <a href=\"/\">All products</a></p>";
        return Ok(page(StatusCode::NOT_FOUND, "Not found", who.as_ref(), body));
    };
    let body = format!(
        "<h1>{name}</h1>\n<p>{blurb}</p>\n<p class=\"shop-price\">{price}</p>\n\
         <p><a href=\"/\">All products</a></p>",
        name = escape(&p.name),
        blurb = escape(&p.blurb),
        price = dollars(p.price_cents),
    );
    Ok(page(StatusCode::OK, &p.name, who.as_ref(), &body))
}

/// `GET /login`: the form.
async fn login_form(State(shop): State<Shop>, headers: HeaderMap) -> Result<Response, ShopError> {
    let who = shop.shopper(&headers).await?;
    let body = fill(LOGIN, &[("error", "")]);
    Ok(page(StatusCode::OK, "Log in", who.as_ref(), &body))
}

/// What the login form posts.
#[derive(Deserialize)]
struct Credentials {
    login: String,
    password: String,
}

/// `POST /login`: a session cookie and on to the orders, or the form again.
async fn log_in(
    State(shop): State<Shop>,
    Form(credentials): Form<Credentials>,
) -> Result<Response, ShopError> {
    let login = credentials.login.trim();
    let Some(token) = shop.log_in(login, &credentials.password).await? else {
        let body = fill(LOGIN, &[("error", "Wrong login or password.")]);
        return Ok(page(StatusCode::UNAUTHORIZED, "Log in", None, &body));
    };
    tracing::info!(login, "shopper logged in");
    // HttpOnly: no script reads it. SameSite=Lax: another site's form cannot
    // post with it, which is what keeps /logout and /login safe from CSRF.
    let cookie =
        format!("{SESSION_COOKIE}={token}; Path=/; Max-Age={SESSION_SECS}; HttpOnly; SameSite=Lax");
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/orders")).into_response())
}

/// `POST /logout`: the session ends, here and in the browser.
async fn log_out(State(shop): State<Shop>, headers: HeaderMap) -> Result<Response, ShopError> {
    shop.log_out(&headers).await?;
    let cookie = format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax");
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response())
}

/// `GET /orders`: the shopper's orders; the login form first if need be.
async fn orders(State(shop): State<Shop>, headers: HeaderMap) -> Result<Response, ShopError> {
    let Some(who) = shop.shopper(&headers).await? else {
        return Ok(Redirect::to("/login").into_response());
    };
    let orders = shop.orders(&who.id, 50).await?;
    let mut body = format!("<h1>Your orders, {}</h1>\n", escape(&who.name));
    if orders.is_empty() {
        body += "<p>No orders yet.</p>";
    } else {
        body += "<table class=\"shop-orders\">\n<thead><tr><th>Order</th><th>Placed</th>\
                 <th>Item</th><th>Total</th><th>Status</th></tr></thead>\n<tbody>\n";
        for o in &orders {
            body += &format!(
                "<tr><td>{id}</td><td>{on}</td>\
                 <td>{quantity} × <a href=\"/products/{sku}\">{name}</a></td>\
                 <td>{total}</td><td>{status}</td></tr>\n",
                id = escape(&o.id),
                on = escape(&o.placed_on),
                quantity = o.quantity,
                sku = escape(&o.sku),
                name = escape(&o.name),
                total = dollars(o.total_minor),
                status = escape(&o.status),
            );
        }
        body += "</tbody>\n</table>";
    }
    Ok(page(StatusCode::OK, "Your orders", Some(&who), &body))
}

/// `GET /style.css`.
async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        STYLE,
    )
}

/// A whole page: the layout around `body`, with the navigation for `who`.
fn page(status: StatusCode, title: &str, who: Option<&Shopper>, body: &str) -> Response {
    let nav = match who {
        Some(who) => format!(
            "<a href=\"/\">Products</a> <a href=\"/orders\">My orders</a> \
             <span class=\"shop-who\">{}</span> \
             <form method=\"post\" action=\"/logout\">\
             <button class=\"shop-button\" type=\"submit\">Log out</button></form>",
            escape(&who.name)
        ),
        None => "<a href=\"/\">Products</a> <a href=\"/login\">Log in</a>".to_owned(),
    };
    let title = escape(title);
    let html = fill(
        LAYOUT,
        &[
            ("title", &title),
            ("nav", &nav),
            ("body", body),
            ("support", support::WIDGET),
        ],
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // The pages show who is logged in: no shared cache may keep them.
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// `template` with each `{{name}}` replaced by its value, in one pass, so a
/// value that happens to contain `{{…}}` is left as it is.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        let key = &rest[start + 2..start + end];
        out += &rest[..start];
        out += values
            .iter()
            .find(|(k, _)| *k == key)
            .map_or("", |(_, v)| v);
        rest = &rest[start + end + 2..];
    }
    out + rest
}

/// Text as HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&#39;",
            c => out.push(c),
        }
    }
    out
}

/// Cents as dollars: `$18.00`.
fn dollars(cents: i64) -> String {
    format!("${}.{:02}", cents / 100, (cents % 100).abs())
}

impl IntoResponse for ShopError {
    /// A plain 500 page; the details go to the log, not to the shopper.
    fn into_response(self) -> Response {
        tracing::error!(error = %self, "request failed");
        let body = "<h1>Sorry</h1><p>The shop is not available right now; try again shortly.</p>";
        page(StatusCode::INTERNAL_SERVER_ERROR, "Sorry", None, body)
    }
}
