//! The failed-join ceiling holds across the cluster: wrong codes tried on
//! one node close joining on every node for the rest of the minute, since a
//! guesser spreads over nodes as easily as over addresses.

use serde_json::json;

use crate::limits::{away_from_a_minute_boundary, refused_by_the_failed_join_ceiling};
use crate::support::Ws;
use crate::support::cluster::{Cluster, register_at};

#[tokio::test]
async fn wrong_codes_on_one_node_close_joining_on_the_others() {
    let cluster = Cluster::start(2, &[("RELAY_FAILED_JOIN_LIMIT", "4")]);
    let (a, b) = (cluster.node(1), cluster.node(2));
    let r = register_at(&a.url("/mac")).await;
    away_from_a_minute_boundary(20).await;
    for node in [a, b, a, b] {
        let mut g = Ws::connect(&node.url("/browser")).await;
        g.json(json!({"type": "join", "code": "YYYYYY"})).await;
        g.expect_error("INVALID_CODE").await;
    }
    for node in [a, b] {
        let mut late = Ws::connect(&node.url("/browser")).await;
        refused_by_the_failed_join_ceiling(&mut late, &r.code).await;
        assert_eq!(
            node.metric(r#"relay_rate_limited_total{limit="failed_joins"}"#)
                .await,
            1.0
        );
    }
}
