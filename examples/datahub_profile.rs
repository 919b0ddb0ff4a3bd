//! One customer, two systems, one profile: an ERP adapter backed by a real
//! SQL table and a CRM adapter calling an HTTP/JSON service, merged by the
//! `DataHub`. A third system (a loyalty service) is too slow today, and the
//! answer says so instead of failing.
//!
//! Run it with `cargo run --example datahub_profile`.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use cs::core::{Timestamp, VisitorId};
use cs::datahub::{
    AdapterError, Capabilities, Capability, DataAdapter, DataHub, HubConfig, Order, OrderLine,
    Product, UserProfile,
};
use serde_json::json;
use sqlx::{Row, SqlitePool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------- the ERP --

/// The ERP: customers, orders and products in SQL tables.
struct Erp {
    db: SqlitePool,
}

impl Erp {
    async fn with_demo_data() -> Result<Self, sqlx::Error> {
        let db = SqlitePool::connect("sqlite::memory:").await?;
        for statement in [
            "CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT, tier TEXT)",
            "CREATE TABLE orders (id TEXT PRIMARY KEY, customer TEXT, status TEXT, total_minor INTEGER, currency TEXT, placed_at INTEGER)",
            "CREATE TABLE order_lines (order_id TEXT, sku TEXT, name TEXT, quantity INTEGER)",
            "CREATE TABLE products (sku TEXT PRIMARY KEY, name TEXT, price_minor INTEGER, currency TEXT, stock INTEGER)",
            "INSERT INTO customers VALUES ('v-1001', 'WANG FANG', 'gold')",
            "INSERT INTO orders VALUES ('SO-5521', 'v-1001', 'shipped', 25900, 'CNY', 1764000000000), ('SO-5480', 'v-1001', 'delivered', 9900, 'CNY', 1763000000000)",
            "INSERT INTO order_lines VALUES ('SO-5521', 'JKT-BLUE-M', 'Down jacket, blue, M', 1), ('SO-5480', 'SCARF-01', 'Wool scarf', 1)",
            "INSERT INTO products VALUES ('JKT-BLUE-M', 'Down jacket, blue, M', 25900, 'CNY', 14)",
        ] {
            sqlx::query(statement).execute(&db).await?;
        }
        Ok(Self { db })
    }

    async fn lines(&self, order_id: &str) -> Result<Vec<OrderLine>, sqlx::Error> {
        let rows = sqlx::query("SELECT sku, name, quantity FROM order_lines WHERE order_id = ?")
            .bind(order_id)
            .fetch_all(&self.db)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OrderLine {
                    sku: r.try_get(0)?,
                    name: r.try_get(1)?,
                    quantity: r.try_get(2)?,
                })
            })
            .collect()
    }

    async fn order_from_row(&self, row: &sqlx::sqlite::SqliteRow) -> Result<Order, sqlx::Error> {
        let id: String = row.try_get(0)?;
        Ok(Order {
            lines: self.lines(&id).await?,
            id,
            status: row.try_get(1)?,
            total_minor: row.try_get(2)?,
            currency: row.try_get(3)?,
            placed_at: Timestamp::from_millis(row.try_get::<i64, _>(4)?.max(0) as u64),
        })
    }
}

#[async_trait]
impl DataAdapter for Erp {
    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[
            Capability::UserProfile,
            Capability::RecentOrders,
            Capability::OrderById,
            Capability::ProductBySku,
        ])
    }

    async fn user_profile(&self, visitor: &VisitorId) -> Result<Option<UserProfile>, AdapterError> {
        let row = sqlx::query("SELECT name, tier FROM customers WHERE id = ?")
            .bind(visitor.as_str())
            .fetch_optional(&self.db)
            .await
            .map_err(AdapterError::failed)?;
        row.map(|r| {
            Ok(UserProfile {
                name: r.try_get(0).map_err(AdapterError::failed)?,
                tier: r.try_get(1).map_err(AdapterError::failed)?,
                ..UserProfile::default()
            })
        })
        .transpose()
    }

    async fn recent_orders(
        &self,
        visitor: &VisitorId,
        limit: usize,
    ) -> Result<Vec<Order>, AdapterError> {
        let rows = sqlx::query(
            "SELECT id, status, total_minor, currency, placed_at FROM orders \
             WHERE customer = ? ORDER BY placed_at DESC LIMIT ?",
        )
        .bind(visitor.as_str())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.db)
        .await
        .map_err(AdapterError::failed)?;
        let mut orders = Vec::new();
        for row in &rows {
            orders.push(
                self.order_from_row(row)
                    .await
                    .map_err(AdapterError::failed)?,
            );
        }
        Ok(orders)
    }

    async fn order(&self, order_id: &str) -> Result<Option<Order>, AdapterError> {
        let row = sqlx::query(
            "SELECT id, status, total_minor, currency, placed_at FROM orders WHERE id = ?",
        )
        .bind(order_id)
        .fetch_optional(&self.db)
        .await
        .map_err(AdapterError::failed)?;
        match row {
            Some(row) => Ok(Some(
                self.order_from_row(&row)
                    .await
                    .map_err(AdapterError::failed)?,
            )),
            None => Ok(None),
        }
    }

    async fn product(&self, sku: &str) -> Result<Option<Product>, AdapterError> {
        let row = sqlx::query(
            "SELECT sku, name, price_minor, currency, stock FROM products WHERE sku = ?",
        )
        .bind(sku)
        .fetch_optional(&self.db)
        .await
        .map_err(AdapterError::failed)?;
        row.map(|r| -> Result<Product, sqlx::Error> {
            Ok(Product {
                sku: r.try_get(0)?,
                name: r.try_get(1)?,
                price_minor: r.try_get(2)?,
                currency: r.try_get(3)?,
                in_stock: r.try_get::<Option<i64>, _>(4)?.map(|n| n.max(0) as u64),
                attributes: Default::default(),
            })
        })
        .transpose()
        .map_err(AdapterError::failed)
    }
}

// ---------------------------------------------------------------- the CRM --

/// A stand-in for the shop's CRM: a tiny HTTP/JSON service on a local port,
/// answering `GET /customers/{id}`.
///
/// The HTTP here is written by hand, in a few lines, so the example builds
/// without an HTTP stack; a real adapter would use a client crate (reqwest).
async fn start_crm_service() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = match path {
                    "/customers/v-1001" => (
                        "200 OK",
                        json!({
                            "name": "Wang Fang",
                            "email": "wang.fang@example.com",
                            "phone": "+86 138 0000 0000",
                            "tags": ["vip", "prefers-zh"],
                            "lifetime_value": 18640
                        }),
                    ),
                    _ => ("404 Not Found", json!({"error": "no such customer"})),
                };
                let body = body.to_string();
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

/// The CRM adapter: profile data over HTTP/JSON.
struct Crm {
    addr: SocketAddr,
}

impl Crm {
    /// `GET path`, returning the status code and the JSON body.
    async fn get(&self, path: &str) -> Result<(u16, serde_json::Value), AdapterError> {
        let mut stream = TcpStream::connect(self.addr)
            .await
            .map_err(AdapterError::failed)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(AdapterError::failed)?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(AdapterError::failed)?;
        let raw = String::from_utf8(raw).map_err(AdapterError::failed)?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| AdapterError::failed("the CRM sent a response without a body"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                AdapterError::failed(format!("the CRM sent a bad status line: {head:.40}"))
            })?;
        Ok((
            status,
            serde_json::from_str(body).map_err(AdapterError::failed)?,
        ))
    }
}

#[async_trait]
impl DataAdapter for Crm {
    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[Capability::UserProfile])
    }

    async fn user_profile(&self, visitor: &VisitorId) -> Result<Option<UserProfile>, AdapterError> {
        let (status, body) = self.get(&format!("/customers/{visitor}")).await?;
        match status {
            404 => Ok(None),
            200 => {
                let text = |key: &str| body[key].as_str().map(str::to_owned);
                Ok(Some(UserProfile {
                    name: text("name"),
                    email: text("email"),
                    phone: text("phone"),
                    tier: None,
                    tags: body["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect(),
                    attributes: [("lifetime_value".to_owned(), body["lifetime_value"].clone())]
                        .into(),
                }))
            }
            other => Err(AdapterError::failed(format!(
                "the CRM answered HTTP {other}"
            ))),
        }
    }
}

// ------------------------------------------------------- a slow system --

/// A loyalty service that is having a bad day: it answers after 5 s.
struct Loyalty;

#[async_trait]
impl DataAdapter for Loyalty {
    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[Capability::UserProfile])
    }

    async fn user_profile(&self, _: &VisitorId) -> Result<Option<UserProfile>, AdapterError> {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(None)
    }
}

// ------------------------------------------------------------------ main --

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let crm_addr = start_crm_service().await?;
    println!("CRM service listening on http://{crm_addr}");

    // Registration order is priority: the CRM's name spelling beats the ERP's.
    let mut hub = DataHub::new(HubConfig {
        adapter_timeout: Duration::from_millis(300),
        ..HubConfig::default()
    });
    hub.register("crm", Crm { addr: crm_addr })?;
    hub.register("erp", Erp::with_demo_data().await?)?;
    hub.register("loyalty", Loyalty)?;

    let visitor = VisitorId::new("v-1001")?;
    let profile = hub.user_profile(&visitor).await;
    println!(
        "\nprofile of {visitor}, answered by {:?}:",
        profile.answered_by
    );
    println!("{}", serde_json::to_string_pretty(&profile.value)?);
    for failure in &profile.failures {
        println!("  missing: {} ({:?})", failure.adapter, failure.reason);
    }

    let orders = hub.recent_orders(&visitor, 5).await;
    println!("\nrecent orders (complete: {}):", orders.is_complete());
    for order in &orders.value {
        let items: Vec<&str> = order.lines.iter().map(|l| l.name.as_str()).collect();
        println!(
            "  {} {} {}.{:02} {} {:?}",
            order.id,
            order.status,
            order.total_minor / 100,
            order.total_minor % 100,
            order.currency,
            items
        );
    }

    let product = hub.product("JKT-BLUE-M").await;
    if let Some(p) = &product.value {
        println!("\nproduct {}: {} in stock {:?}", p.sku, p.name, p.in_stock);
    }

    let again = hub.recent_orders(&visitor, 5).await;
    println!("\nasked again: from cache = {}", again.from_cache);
    Ok(())
}
