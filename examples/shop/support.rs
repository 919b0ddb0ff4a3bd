//! The shop's customer service, whole: who asks, their orders, the desk at /support, the tag.

use std::{path::Path, sync::Arc};

use axum::{http::request::Parts, Router};
use cs::core::{AgentId, AgentRecord, AgentRole, MemoryDirectory, TenantId, Timestamp, VisitorId};
use cs::datahub::{AdapterError, Capabilities, Capability, DataAdapter, Order, OrderLine};
use cs::desk::{Customer, FsAttachments, Identity, IdentityError, ServiceDesk, Signer};
use cs::intent::faq::{Faq, FaqBot};

use crate::{shop::OrderRow, shop::Shop, BoxError};

/// What every page carries before `</body>`: the whole chat, on the shop's side.
pub const WIDGET: &str = r#"<script src="/support/widget.js" defer></script>"#;

/// A shopper is who the shop's session cookie says, their customer id their visitor
/// id; an agent signs in with "demo" (the desk refuses logins not in its directory).
#[async_trait::async_trait]
impl Identity for Shop {
    async fn customer(&self, request: &Parts) -> Result<Option<Customer>, IdentityError> {
        let shopper = self.shopper(&request.headers).await;
        let shopper = shopper.map_err(|e| IdentityError::Unavailable(e.to_string()))?;
        let name = shopper.as_ref().map(|s| s.name.clone());
        let id = shopper.and_then(|s| VisitorId::new(s.id).ok());
        Ok(id.map(|id| Customer { id, name }))
    }

    async fn sign_in(&self, login: &str, password: &str) -> Result<Option<AgentId>, IdentityError> {
        Ok(AgentId::new(login).ok().filter(|_| password == "demo"))
    }
    fn offers_sign_in(&self) -> bool {
        true
    }
}

/// The console's orders panel, read from the shop's own orders table.
#[async_trait::async_trait]
impl DataAdapter for Shop {
    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[Capability::RecentOrders])
    }
    async fn recent_orders(&self, who: &VisitorId, n: usize) -> Result<Vec<Order>, AdapterError> {
        let orders = self.orders(who.as_str(), n).await;
        let orders = orders.map_err(AdapterError::failed)?;
        let order = |o: OrderRow| Order {
            id: o.id,
            status: o.status,
            total_minor: o.total_minor,
            currency: "USD".into(),
            placed_at: Timestamp::from_millis(o.placed_at),
            lines: vec![OrderLine {
                sku: o.sku,
                name: o.name,
                quantity: o.quantity,
            }],
        };
        Ok(orders.into_iter().map(order).collect())
    }
}

/// The shop's `app` with the desk at /support (its database, key and uploads in `dir`).
pub async fn nest(app: Router, shop: &Shop, dir: &Path) -> Result<(Router, ServiceDesk), BoxError> {
    let mut hub = cs::datahub::DataHub::new(Default::default());
    hub.register("shop", shop.clone())?;
    let alice = AgentRecord::new(AgentId::new("alice")?, "Alice", 3);
    // Bob supervises: /support/agent/reports shows him everyone's figures.
    let bob = AgentRecord::new(AgentId::new("bob")?, "Bob", 3).with_role(AgentRole::Supervisor);
    let faq = Faq::from_json(include_str!("../chat_server/faq.json"))?;
    let store = cs::datahub::store::SqliteStore::open(dir.join("desk.db")).await?;
    let desk = ServiceDesk::builder(TenantId::new("shop")?)
        .store(Arc::new(store))
        .directory(Arc::new(MemoryDirectory::from_records([alice, bob])?))
        .identity(shop.clone())
        .signer(Signer::load_or_create(&dir.join("secret.key"))?)
        .bot(Arc::new(FaqBot::train(faq, Default::default())?))
        .data_hub(Arc::new(hub))
        .attachments(FsAttachments::new(dir.join("uploads"))?)
        .build()
        .await?;
    Ok((app.nest("/support", desk.router()), desk))
}
