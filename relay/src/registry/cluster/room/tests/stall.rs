//! One stalled guest on another node never holds the host or the others.

use relay_protocol::AdmitMode;

use super::*;

/// Reads and acknowledges everything `conn` has in `link`'s pipe; returns
/// the data frames read so far (`got` keeps them across calls).
fn read_and_ack(link: &Link, conn: ConnId, got: &mut Vec<Frame>, after: &mut u64) {
    let mut d = Drained::default();
    if let Status::NotMine | Status::Cut = link.inbound.drain(conn, *after, &mut d) {
        return;
    }
    for (pos, item, _) in d.items.drain(..) {
        if let Item::Data { frame, .. } = item {
            got.push(frame);
        }
        *after = pos;
    }
    link.inbound.ack(*after);
}

/// A guest on n2 reads nothing while the host sends far more than a
/// guest may leave unread: it is cut (the host hears `guest_away`), and
/// the guests on n1 and n3, which read, get every frame in order.
#[actix::test]
async fn a_stalled_guest_is_cut_and_the_others_get_every_frame() {
    let r = TestRedis::start().await;
    let nodes = three_nodes(&r).await;
    let host = host_on(&nodes[0], 3, AdmitMode::Auto).await;
    let code = host.reg.code.clone();
    let good1 = join(&nodes[0], &code, "good").await.unwrap();
    let stalled = join(&nodes[1], &code, "stalled").await.unwrap();
    let good3 = join(&nodes[2], &code, "good").await.unwrap();
    wait_for("all in", || {
        events(&host.seen())
            .iter()
            .filter(|e| e["type"] == "guest_admitted")
            .count()
            == 3
    })
    .await;
    // 64 KiB frames: six times the 1 MiB a guest may hold unread.
    let big = |i: u32| {
        let mut b = vec![u8::try_from(i % 251).unwrap(); 64 * 1024];
        b[..4].copy_from_slice(&i.to_be_bytes());
        Frame::Binary(Bytes::from(b))
    };
    const N: u32 = 96;
    let mut got = [(Vec::new(), 0u64), (Vec::new(), 0u64)];
    let goods = [&good1, &good3];
    for i in 0..N {
        host.send(big(i), Target::All);
        for (g, (seen, after)) in goods.iter().zip(got.iter_mut()) {
            read_and_ack(&g.joined.link, g.client.conn(), seen, after);
        }
        // Let the bus carry frames and acks, as a reading client would.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let until = Instant::now() + WAIT;
    while got.iter().any(|(s, _)| s.len() < N as usize) {
        assert!(
            Instant::now() < until,
            "only {:?}",
            got.iter().map(|(s, _)| s.len()).collect::<Vec<_>>()
        );
        for (g, (seen, after)) in goods.iter().zip(got.iter_mut()) {
            read_and_ack(&g.joined.link, g.client.conn(), seen, after);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let want: Vec<Frame> = (0..N).map(big).collect();
    for (seen, _) in &got {
        assert_eq!(seen.len(), want.len());
        assert!(seen == &want, "a good guest's frames differ");
    }
    wait_for("the stalled guest away", || {
        events(&host.seen())
            .iter()
            .any(|e| e["type"] == "guest_away" && e["guestId"] == stalled.id())
    })
    .await;
    assert!(
        stalled.seen().is_none(),
        "its pipe no longer delivers to the cut connection"
    );
}
