//! The load tool's room scenarios (`relay-load --scenario fanout|fanin`)
//! and its guessing attack (`guess`) against a real relay, and `make
//! bench`'s report of them
//! (tests/bench/report.py) from the JSON they write. No rate is asserted:
//! only that every frame arrived and the report's ratios are those numbers'.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::support::Relay;
use crate::support::cluster::free_port;

/// Bounds every run of the load tool (its own --timeout is shorter).
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// A fresh directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(kind: &str) -> Scratch {
        let path =
            std::env::temp_dir().join(format!("relay-test-load-{kind}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("json")).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bench")
}

/// Runs `relay-load` with `args` (and a bounded --timeout), to its end.
async fn relay_load(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay-load"))
        .args(["--quiet", "--timeout", "60s"])
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("relay-load did not end in time")
        .expect("start relay-load")
}

/// Runs `relay-load` and reads the results it wrote to `json`.
async fn measured(json: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    let path = json.to_str().unwrap();
    all.extend(["--json", path]);
    let out = relay_load(&all).await;
    assert!(
        out.status.success(),
        "relay-load {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    v["results"].clone()
}

async fn python(args: &[&str]) -> Output {
    let run = tokio::process::Command::new("python3")
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("python3 did not end in time")
        .expect("start python3 (make deps installs it)")
}

#[tokio::test]
async fn rooms_carry_every_frame_and_the_report_sets_them_against_one_guest() {
    let relay = Relay::start(&[]);
    let url = relay.url("");
    let dir = Scratch::new("rooms");
    let json = |name: &str| dir.0.join("json").join(format!("{name}.json"));
    let short = ["--size", "64", "--duration", "300ms", "--url", &url];

    let one = measured(
        &json("tp-64-relay-r1"),
        &[&["--scenario", "throughput", "--pairs", "2"], &short[..]].concat(),
    )
    .await;
    let rooms = ["--rooms", "2", "--guests", "3"];
    let out = measured(
        &json("tp-64-fanout-r1"),
        &[&["--scenario", "fanout"], &rooms[..], &short[..]].concat(),
    )
    .await;
    let host_frames = out["host_frames"].as_u64().unwrap();
    assert!(host_frames > 0, "{out}");
    // Each frame reached each of the 3 guests: the run checked them in order.
    assert_eq!(out["frames_delivered"].as_u64(), Some(3 * host_frames));
    assert_eq!(out["deliveries_per_host_frame"].as_f64(), Some(3.0));
    assert_eq!(out["frames_lost"], 0);
    let into = measured(
        &json("tp-64-fanin-r1"),
        &[&["--scenario", "fanin"], &rooms[..], &short[..]].concat(),
    )
    .await;
    assert!(into["frames_sent"].as_u64().unwrap() > 0, "{into}");
    assert_eq!(into["frames_lost"], 0);
    // The hosts left: no room outlives the run on the node.
    relay.wait_metric("relay_rooms", |v| v == 0.0).await;

    let report = python(&[
        bench_dir().join("report.py").to_str().unwrap(),
        dir.0.to_str().unwrap(),
    ])
    .await;
    assert!(
        report.status.success(),
        "report.py failed: {}",
        String::from_utf8_lossy(&report.stderr)
    );
    let md = std::fs::read_to_string(dir.0.join("report.md")).unwrap();
    let fps = |v: &Value| v["frames_per_second"].as_f64().unwrap();
    let ratio = |v: &Value| format!("| {:.2} |", fps(v) / fps(&one));
    let line = |what: &str| {
        md.lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("no {what:?} in the report:\n{md}"))
            .to_owned()
    };
    let fan_out = line("| fan-out 64: one host to 3 guests, delivered (2 rooms) |");
    assert!(fan_out.ends_with(&ratio(&out)), "{fan_out}");
    let fan_in = line("| fan-in 64: 3 guests to one host, read by the host (2 rooms) |");
    assert!(fan_in.ends_with(&ratio(&into)), "{fan_in}");
    // The cross-node rows are there, empty when this run measured none.
    line("| fan-out 64 across three nodes: one host to - guests, delivered");
    line("| fan-out 64 across three nodes: Redis PUBLISH calls per broadcast frame");
}

#[tokio::test]
async fn the_reports_arithmetic_passes_its_unit_tests() {
    let dir = bench_dir();
    let out = python(&[
        "-m",
        "unittest",
        "discover",
        "-s",
        dir.to_str().unwrap(),
        "-p",
        "test_*.py",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_relay_without_rooms_or_a_room_too_big_is_refused_not_mismeasured() {
    // ws-forwarder pairs a register with one join and knows nothing of
    // rooms: measuring it would be measuring a pairing under a room's name.
    let port = free_port();
    let mut fwd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ws-forwarder"))
        .arg(format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start ws-forwarder");
    let url = format!("ws://127.0.0.1:{port}");
    let listening = async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), listening)
        .await
        .expect("ws-forwarder did not listen");
    for scenario in ["fanout", "fanin"] {
        let out = relay_load(&["--scenario", scenario, "--url", &url, "--duration", "1s"]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("no room in the answer"), "{err}");
    }
    let _ = fwd.kill().await;

    let relay = Relay::start(&[("RELAY_MAX_GUESTS", "4")]);
    let out = relay_load(&[
        "--scenario",
        "fanout",
        "--url",
        &relay.url(""),
        "--guests",
        "5",
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("maxGuests must be between 1 and 4"), "{err}");
    let out = relay_load(&[
        "--scenario",
        "fanin",
        "--url",
        &relay.url(""),
        "--rooms",
        "0",
    ])
    .await;
    assert!(!out.status.success());
}

/// `hold` (the 100,000-connection run's load, tests/bench/hundred-k.sh):
/// pairs held through several heartbeats stay open because they answer the
/// relay's pings, every one answers the ping at the end, and with
/// `--wait-close` it sees the relay's drain close every connection.
#[tokio::test]
async fn held_pairs_answer_heartbeats_and_the_final_ping_and_see_the_drain() {
    use tokio::io::AsyncBufReadExt;
    let mut relay = Relay::start(&[
        ("RELAY_HEARTBEAT_INTERVAL", "200ms"),
        ("RELAY_HEARTBEAT_TIMEOUT", "200ms"),
    ]);
    let url = relay.url("");
    let dir = Scratch::new("hold");
    let json = dir.0.join("json").join("hold.json");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay-load"))
        .args([
            "--quiet",
            "--timeout",
            "60s",
            "--scenario",
            "hold",
            "--wait-close",
        ])
        .args(["--pairs", "6", "--duration", "1500ms", "--url", &url])
        .args(["--json", json.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start relay-load");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let pinged = async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("all 6 pairs pinged") {
                return;
            }
        }
        panic!("relay-load ended before it pinged every pair");
    };
    tokio::time::timeout(RUN_LIMIT, pinged)
        .await
        .expect("no ping in time");
    relay.sigterm();
    relay.wait_exit();
    let status = tokio::time::timeout(RUN_LIMIT, child.wait())
        .await
        .expect("relay-load did not end in time")
        .unwrap();
    assert!(status.success());
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let r = &v["results"];
    assert_eq!(r["answered"], 6, "{r}");
    assert_eq!(r["lost_during_hold"], 0, "{r}");
    assert_eq!(r["closed_by_relay"], 12, "{r}");
}

#[tokio::test]
async fn guessers_pass_the_limit_and_the_person_beside_them_pairs_with_long_codes() {
    // A small attack: 4 addresses at 5 joins a minute past a limit of 5;
    // the person pairs at most 4 times in the run, under their own 5.
    let relay = Relay::start(&[("RELAY_JOIN_RATE", "5"), ("RELAY_FAILED_JOIN_LIMIT", "5")]);
    let dir = Scratch::new("guess");
    let url = format!("ws://{}", relay.addr);
    let r = measured(
        &dir.0.join("json/guess.json"),
        &[
            "--scenario",
            "guess",
            "--url",
            &url,
            "--source",
            "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5",
            "--duration",
            "3s",
        ],
    )
    .await;
    assert_eq!(r["guessers"], 4);
    assert!(r["wrong_guesses"].as_u64().unwrap() >= 20, "{r}");
    assert!(r["rate_limited"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["honest_failures"], 0, "{r}");
    assert!(r["honest_pairings"].as_u64().unwrap() >= 1, "{r}");
    // The person's last code came after the limit was passed.
    assert_eq!(r["code_length"], 8, "{r}");
    assert_eq!(relay.metric("relay_under_attack").await, 1.0);
}
