//! Two nodes over a real Redis: each with its own `RedisBus` (as separate
//! processes would have), one shared `MemoryStore`.

use std::sync::Arc;
use std::time::Duration;

use cs_transport::{RedisBus, RedisBusConfig};

pub use super::bus_nodes::*;
use super::Node;

pub struct RedisDeployment {
    pub channel: String,
    pub bus_one: Arc<RedisBus>,
    pub bus_two: Arc<RedisBus>,
    pub one: Node,
    pub two: Node,
}

/// Nodes "one" (bus at `url_one`) and "two" (at `url_two`) on `channel`,
/// with a 100 ms position check, once both have subscribed.
pub async fn redis_deployment(url_one: &str, url_two: &str, channel: &str) -> RedisDeployment {
    let bus_config = RedisBusConfig {
        channel: channel.to_owned(),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        ..RedisBusConfig::default()
    };
    let bus_one = RedisBus::connect(url_one, bus_config.clone())
        .await
        .unwrap();
    let bus_two = RedisBus::connect(url_two, bus_config).await.unwrap();
    let (one, two) = nodes_on(bus_one.clone(), bus_two.clone());
    for bus in [&bus_one, &bus_two] {
        wait_until("both nodes subscribed", Duration::from_secs(10), || {
            bus.stats().subscriptions >= 1
        })
        .await;
    }
    RedisDeployment {
        channel: channel.to_owned(),
        bus_one,
        bus_two,
        one,
        two,
    }
}
