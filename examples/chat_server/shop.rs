//! The shop's own systems, as the agent console sees them through the
//! `DataHub`: an order system (ERP) and a customer system (CRM).
//!
//! Both are **demo systems**: they make up a stable profile and order
//! history from the visitor id, so every visitor has something to show. A
//! shop replaces them with adapters that call its real ERP and CRM
//! (`examples/datahub_profile.rs` shows one backed by SQL and one by HTTP).
//! The CRM can be switched down from the console, to show how a partial
//! answer looks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use cs::core::{Timestamp, VisitorId};
use cs::datahub::{
    AdapterError, Capabilities, Capability, DataAdapter, DataHub, HubConfig, Order, OrderLine,
    UserProfile,
};

/// The DataHub with the two demo systems registered.
pub struct Shop {
    /// Ask it for profiles and orders.
    pub hub: Arc<DataHub>,
    crm_down: Arc<AtomicBool>,
}

impl Shop {
    /// The hub with the demo ERP and CRM.
    pub fn new() -> Self {
        let crm_down = Arc::new(AtomicBool::new(false));
        let mut hub = DataHub::new(HubConfig {
            // A console waits for a profile, not for a slow system.
            adapter_timeout: Duration::from_millis(500),
            ..HubConfig::default()
        });
        let registered = hub.register("erp", DemoErp).and_then(|()| {
            hub.register(
                "crm",
                DemoCrm {
                    down: Arc::clone(&crm_down),
                },
            )
        });
        if let Err(e) = registered {
            unreachable!("two distinct names: {e}")
        }
        Shop {
            hub: Arc::new(hub),
            crm_down,
        }
    }

    /// Switches the simulated CRM outage.
    pub fn set_crm_down(&self, down: bool) {
        self.crm_down.store(down, Ordering::Relaxed);
    }
}

/// A stable number from a visitor id, to make up demo data (FNV-1a).
fn seed(visitor: &VisitorId) -> u64 {
    visitor
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
}

const PRODUCTS: [(&str, &str, i64); 6] = [
    ("JKT-BLUE-M", "Down jacket, blue, M / 羽绒服 蓝色 M", 25_900),
    ("SCARF-01", "Wool scarf / 羊毛围巾", 9_900),
    ("SNKR-42", "Running shoes, 42 / 跑鞋 42码", 45_900),
    ("MUG-02", "Ceramic mug / 陶瓷杯", 3_900),
    ("TEE-WHT-L", "T-shirt, white, L / 白色T恤 L", 7_900),
    ("BAG-TOTE", "Canvas tote bag / 帆布包", 5_900),
];

const STATUSES: [&str; 4] = ["paid", "shipped", "delivered", "refund requested"];

/// The order system.
struct DemoErp;

#[async_trait]
impl DataAdapter for DemoErp {
    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[Capability::RecentOrders, Capability::UserProfile])
    }

    async fn user_profile(&self, visitor: &VisitorId) -> Result<Option<UserProfile>, AdapterError> {
        // The ERP knows where it ships, not who the customer is.
        let s = seed(visitor);
        let mut profile = UserProfile::default();
        let city = [
            "Shanghai 上海",
            "Hangzhou 杭州",
            "Shenzhen 深圳",
            "Berlin",
            "Lyon",
        ][(s % 5) as usize];
        profile.attributes.insert("ship_to".into(), json!(city));
        Ok(Some(profile))
    }

    async fn recent_orders(
        &self,
        visitor: &VisitorId,
        limit: usize,
    ) -> Result<Vec<Order>, AdapterError> {
        let s = seed(visitor);
        let count = (s % 4) as usize + 1;
        let now = Timestamp::now().as_millis();
        Ok((0..count.min(limit))
            .map(|i| {
                let pick = ((s >> (i * 8)) % PRODUCTS.len() as u64) as usize;
                let (sku, name, price) = PRODUCTS[pick];
                let quantity = ((s >> (i * 4 + 2)) % 2) as u32 + 1;
                Order {
                    id: format!("SO-{}", 10_000 + (s >> (i * 5)) % 90_000),
                    status: STATUSES[(i + (s % 2) as usize) % STATUSES.len()].into(),
                    total_minor: price * i64::from(quantity),
                    currency: "CNY".into(),
                    placed_at: Timestamp::from_millis(
                        now.saturating_sub((i as u64 + 1) * 3 * 86_400_000),
                    ),
                    lines: vec![OrderLine {
                        sku: sku.into(),
                        name: name.into(),
                        quantity,
                    }],
                }
            })
            .collect())
    }
}

/// The customer system; it can be switched down.
struct DemoCrm {
    down: Arc<AtomicBool>,
}

#[async_trait]
impl DataAdapter for DemoCrm {
    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[Capability::UserProfile])
    }

    async fn user_profile(&self, visitor: &VisitorId) -> Result<Option<UserProfile>, AdapterError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(AdapterError::failed(
                "connection refused (simulated outage)",
            ));
        }
        let s = seed(visitor);
        let names = [
            "Wang Fang 王芳",
            "Li Wei 李伟",
            "Zhang Min 张敏",
            "Anna Schmidt",
            "Lucas Martin",
        ];
        let tiers = ["gold", "silver", "new"];
        let mut profile = UserProfile {
            name: Some(names[(s % 5) as usize].into()),
            email: Some(format!("{}@example.com", visitor.as_str())),
            tier: Some(tiers[((s >> 3) % 3) as usize].into()),
            ..UserProfile::default()
        };
        profile
            .attributes
            .insert("points".into(), json!((s >> 7) % 5_000));
        Ok(Some(profile))
    }
}
