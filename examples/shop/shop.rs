//! The shop's own data, in its own SQLite file: customers, products, their
//! orders and the login sessions. Nothing here knows about customer service;
//! `support.rs` reads it through [`Shop::shopper`] and [`Shop::orders`].

use std::path::Path;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// The name of the shop's session cookie.
pub const SESSION_COOKIE: &str = "shop_session";
/// How long a login lasts: a week, in the browser and here.
pub const SESSION_SECS: u32 = 7 * 24 * 3600;

/// The tables, created on first start.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS customers (
    id TEXT PRIMARY KEY, login TEXT NOT NULL UNIQUE, password TEXT NOT NULL,
    name TEXT NOT NULL, email TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    sku TEXT PRIMARY KEY, name TEXT NOT NULL, blurb TEXT NOT NULL, price_cents INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(id),
    sku TEXT NOT NULL REFERENCES products(sku), quantity INTEGER NOT NULL,
    status TEXT NOT NULL, placed_on TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id, placed_on);
CREATE TABLE IF NOT EXISTS sessions (
    token TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(id),
    created_at INTEGER NOT NULL DEFAULT (unixepoch()));
";

/// The demo shoppers, products and orders; `OR IGNORE` keeps a restart
/// from duplicating them. The passwords are plain text because they are
/// printed on the login page anyway; a real shop stores a slow hash
/// (argon2) and compares that.
const SEED: &str = "
INSERT OR IGNORE INTO customers VALUES
    ('c-1001', 'ann', 'demo', 'Ann Lee', 'ann@example.com'),
    ('c-1002', 'ben', 'demo', 'Ben Okafor', 'ben@example.com');
INSERT OR IGNORE INTO products VALUES
    ('MUG-01', 'Stoneware mug', 'Hand-glazed, 350 ml, dishwasher safe.', 1800),
    ('TEE-01', 'Organic cotton tee', 'Heavyweight jersey, relaxed fit.', 2500),
    ('TOTE-01', 'Canvas tote', 'Waxed canvas with leather handles.', 3400),
    ('LAMP-01', 'Desk lamp', 'Warm LED, dimmable, in brushed steel.', 6900);
INSERT OR IGNORE INTO orders VALUES
    ('SH-1041', 'c-1001', 'LAMP-01', 1, 'delivered', '2025-04-12'),
    ('SH-1042', 'c-1001', 'MUG-01', 2, 'shipped', '2025-05-03'),
    ('SH-1043', 'c-1001', 'TEE-01', 1, 'paid', '2025-05-06'),
    ('SH-1044', 'c-1002', 'TOTE-01', 1, 'shipped', '2025-05-04');
";

/// What can go wrong in the shop's own data.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// The database failed.
    #[error("the shop's database failed: {0}")]
    Db(#[from] sqlx::Error),
    /// No randomness for a session token.
    #[error("no randomness for a session token: {0}")]
    Randomness(String),
}

/// The shop's database. Cheap to clone: a handle to one pool.
#[derive(Clone)]
pub struct Shop {
    db: SqlitePool,
}

/// A customer, as a logged-in shopper.
pub struct Shopper {
    /// The shop's customer id.
    pub id: String,
    /// Their full name.
    pub name: String,
}

/// A product of the catalogue.
pub struct Product {
    /// Its stock-keeping unit, also its page's address.
    pub sku: String,
    /// Its name.
    pub name: String,
    /// A line about it.
    pub blurb: String,
    /// Its price in cents.
    pub price_cents: i64,
}

/// One order: one product, in some quantity.
pub struct OrderRow {
    /// The order number.
    pub id: String,
    /// Where it stands ("paid", "shipped", "delivered").
    pub status: String,
    /// The day it was placed, `YYYY-MM-DD`.
    pub placed_on: String,
    /// The same day, in milliseconds since the epoch.
    pub placed_at: u64,
    /// The product's SKU.
    pub sku: String,
    /// The product's name.
    pub name: String,
    /// How many.
    pub quantity: u32,
    /// What it cost, in cents.
    pub total_minor: i64,
}

impl Shop {
    /// Opens (creating if need be) the shop's database at `path`, and seeds it.
    pub async fn open(path: &Path) -> Result<Shop, ShopError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            // Several requests may write a session at once: wait, do not fail.
            .busy_timeout(Duration::from_secs(5));
        let db = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&db).await?;
        sqlx::raw_sql(SEED).execute(&db).await?;
        Ok(Shop { db })
    }

    /// Every product, by name.
    pub async fn products(&self) -> Result<Vec<Product>, ShopError> {
        let rows: Vec<(String, String, String, i64)> =
            sqlx::query_as("SELECT sku, name, blurb, price_cents FROM products ORDER BY name")
                .fetch_all(&self.db)
                .await?;
        Ok(rows.into_iter().map(product).collect())
    }

    /// The product `sku`, if there is one.
    pub async fn product(&self, sku: &str) -> Result<Option<Product>, ShopError> {
        let row: Option<(String, String, String, i64)> =
            sqlx::query_as("SELECT sku, name, blurb, price_cents FROM products WHERE sku = ?")
                .bind(sku)
                .fetch_optional(&self.db)
                .await?;
        Ok(row.map(product))
    }

    /// Checks a login and password; answers a new session's token.
    pub async fn log_in(&self, login: &str, password: &str) -> Result<Option<String>, ShopError> {
        let customer: Option<(String,)> =
            sqlx::query_as("SELECT id FROM customers WHERE login = ? AND password = ?")
                .bind(login)
                .bind(password)
                .fetch_optional(&self.db)
                .await?;
        let Some((customer,)) = customer else {
            return Ok(None);
        };
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| ShopError::Randomness(e.to_string()))?;
        let token = hex::encode(bytes);
        sqlx::query("INSERT INTO sessions (token, customer_id) VALUES (?, ?)")
            .bind(&token)
            .bind(customer)
            .execute(&self.db)
            .await?;
        Ok(Some(token))
    }

    /// Ends the session of this request, if it has one.
    pub async fn log_out(&self, headers: &HeaderMap) -> Result<(), ShopError> {
        if let Some(token) = session_token(headers) {
            sqlx::query("DELETE FROM sessions WHERE token = ?")
                .bind(token)
                .execute(&self.db)
                .await?;
        }
        Ok(())
    }

    /// The shopper logged in on this request, by its session cookie.
    pub async fn shopper(&self, headers: &HeaderMap) -> Result<Option<Shopper>, ShopError> {
        let Some(token) = session_token(headers) else {
            return Ok(None);
        };
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT c.id, c.name FROM sessions s JOIN customers c ON c.id = s.customer_id
             WHERE s.token = ? AND s.created_at > unixepoch() - ?",
        )
        .bind(token)
        .bind(SESSION_SECS)
        .fetch_optional(&self.db)
        .await?;
        Ok(row.map(|(id, name)| Shopper { id, name }))
    }

    /// The customer's orders, newest first, at most `limit`.
    pub async fn orders(&self, customer: &str, limit: usize) -> Result<Vec<OrderRow>, ShopError> {
        type Row = (String, String, String, i64, String, String, i64, i64);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT o.id, o.status, o.placed_on, unixepoch(o.placed_on) * 1000,
                    p.sku, p.name, o.quantity, o.quantity * p.price_cents
             FROM orders o JOIN products p ON p.sku = o.sku
             WHERE o.customer_id = ? ORDER BY o.placed_on DESC, o.id DESC LIMIT ?",
        )
        .bind(customer)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.db)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, status, placed_on, at, sku, name, quantity, total)| OrderRow {
                    id,
                    status,
                    placed_on,
                    // The seed's dates are valid; a broken one reads as the epoch.
                    placed_at: u64::try_from(at).unwrap_or(0),
                    sku,
                    name,
                    quantity: u32::try_from(quantity).unwrap_or(0),
                    total_minor: total,
                },
            )
            .collect())
    }
}

fn product((sku, name, blurb, price_cents): (String, String, String, i64)) -> Product {
    Product {
        sku,
        name,
        blurb,
        price_cents,
    }
}

/// The value of the session cookie, if the request carries one.
fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, token)| token)
}
