//! The monitoring works end to end: a real Prometheus (Debian's `prometheus`,
//! which `make deps` installs) scrapes a three-node cluster under a little
//! load, loads the rules of `deploy/prometheus/relay-rules.yml`, and then
//! every query of the Grafana dashboard in `deploy/grafana/` returns data and
//! every rule evaluates without error.
//!
//! The load touches every part of the dashboard: a pair on one node and a
//! pair across two nodes exchanging frames both ways, a join with a code that
//! does not exist, a code that expires unjoined and a join with it, and a
//! browser that drops and resumes on a third node.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::cluster::{Cluster, free_port, pair_at, register_at};
use crate::support::{Got, Pair, WAIT, Ws, resume_msg};

/// The repository root (this crate's manifest is in `relay/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Grafana's `$__rate_interval` at a 1 s scrape interval is 4 s; a wider
/// window keeps every rate defined across the short test.
const RATE_INTERVAL: &str = "15s";

/// A real Prometheus on a free 127.0.0.1 port scraping `targets` every second
/// as job `relay`, with the project's rules loaded; killed and its temp dir
/// removed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir =
            std::env::temp_dir().join(format!("relay-test-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create prometheus dir");
        let rules = repo().join("deploy/prometheus/relay-rules.yml");
        let targets: Vec<String> = targets.iter().map(|a| format!("'{a}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: relay\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn_prometheus(&dir, port) {
                Ok(child) => return Prometheus { child, port, dir },
                // Most likely the port was taken meanwhile: try another.
                Err(e) => last = e,
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("prometheus did not start: {last}");
    }

    /// A GET of the HTTP API; the answer's `data`, failing the test on an error.
    async fn api(&self, path_and_query: &str) -> Value {
        let (status, body) =
            crate::support::http_get(([127, 0, 0, 1], self.port).into(), path_and_query).await;
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path_and_query}: not JSON ({e}): {body}"));
        assert!(
            status == 200 && v["status"] == "success",
            "{path_and_query}: {status} {body}"
        );
        v["data"].clone()
    }

    /// An instant query's result vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(promql)))
            .await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `promql` until it returns something (fails the test after `WAIT`).
    async fn wait_for(&self, promql: &str) {
        let deadline = Instant::now() + WAIT;
        while self.query(promql).await.is_empty() {
            assert!(Instant::now() < deadline, "{promql} stayed empty");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("---- prometheus log (last lines) ----");
            eprintln!("{}", lines[lines.len().saturating_sub(30)..].join("\n"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts prometheus in `dir` on `port` and waits until `/-/ready` answers 200.
fn spawn_prometheus(dir: &Path, port: u16) -> Result<Child, String> {
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("create prometheus.log");
    let mut child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run prometheus (is it installed? `make deps`): {e}"))?;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
            return Err(format!("exited with {status}: {log}"));
        }
        if ready(port) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("not ready in time".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `GET /-/ready` on `port` answers 200 (blocking, for start-up).
fn ready(port: u16) -> bool {
    use std::io::Read;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200")
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Every panel of a dashboard, rows' collapsed panels included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p.clone());
        out.extend(p["panels"].as_array().into_iter().flatten().cloned());
    }
    out
}

/// `expr` with Grafana's variables replaced: the built-in intervals, and the
/// dashboard's own variables (`$name`, `${name}`) from `vars`.
fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut e = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__interval", "1s")
        .replace("$__range", "5m");
    // Longest names first, so `$job` cannot eat the start of `$jobs`.
    let mut vars = vars.to_vec();
    vars.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (k, v) in &vars {
        e = e
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    e
}

/// A pair's round: binary frames from the mac and text `data` from the
/// browser, each read on the other side. Several a round, because the frame
/// latency histogram samples one frame in 16.
async fn exchange(p: &mut Pair, round: u8) {
    for i in 0..FRAMES_PER_ROUND {
        let frame = vec![round; 64 + usize::from(i)];
        p.mac.binary(frame.clone()).await;
        assert_eq!(p.browser.recv().await, Got::Binary(frame));
        let text = json!({"type": "data", "payload": format!("round {round}.{i}")}).to_string();
        p.browser.text(text.clone()).await;
        assert_eq!(p.mac.recv().await, Got::Text(text));
    }
}

/// Frames each way per round of [`exchange`].
const FRAMES_PER_ROUND: u8 = 4;

#[tokio::test]
async fn prometheus_scrapes_the_cluster_and_every_dashboard_query_has_data() {
    const ROUNDS: u8 = 12;
    let c = Cluster::start(3, &[("RELAY_CODE_TTL", "2s")]);
    let prom = Prometheus::start(&c.addrs());
    let start = now() - 1.0;
    prom.wait_for(r#"count(up{job="relay"} == 1) == 3"#).await;

    // A pair on one node and a pair across two nodes, frames both ways, over
    // a few seconds so several scrapes see them.
    let mut local = pair_at(&c.node(1).url("/mac"), &c.node(1).url("/browser")).await;
    let mut cross = pair_at(&c.node(2).url("/mac"), &c.node(3).url("/browser")).await;
    // A code that expires unjoined, and a join that fails.
    let mut lonely = register_at(&c.node(3).url("/mac")).await;
    let mut stranger = c.node(2).browser().await;
    stranger
        .json(json!({"type": "join", "code": "ZZZZZZ"}))
        .await;
    stranger.expect_error("INVALID_CODE").await;
    for round in 1..=ROUNDS {
        exchange(&mut local, round).await;
        exchange(&mut cross, round).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lonely.ws.expect("code_expired").await;
    stranger
        .json(json!({"type": "join", "code": lonely.code}))
        .await;
    stranger.expect_error("EXPIRED_CODE").await;

    // The cross-node browser drops and resumes on the third node.
    let Pair {
        mac: mut cross_mac,
        browser: cross_browser,
        session_id,
        browser_token,
        ..
    } = cross;
    cross_browser.drop_connection();
    cross_mac.expect("peer_disconnected").await;
    let mut browser = Ws::connect(&c.node(1).url("/browser")).await;
    browser
        .json(resume_msg(
            &session_id,
            &browser_token,
            u64::from(ROUNDS) * u64::from(FRAMES_PER_ROUND),
        ))
        .await;
    browser.expect("resumed").await;
    cross_mac.expect("peer_resumed").await;
    let mut cross = Pair {
        mac: cross_mac,
        browser,
        code: String::new(),
        session_id,
        mac_token: String::new(),
        browser_token,
    };
    for round in ROUNDS + 1..=ROUNDS + 5 {
        exchange(&mut local, round).await;
        exchange(&mut cross, round).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Prometheus has scraped all of it.
    for done in [
        r#"sum(relay_resumes_total{result="ok"}) > 0"#,
        r#"sum(relay_codes_expired_total) > 0"#,
        r#"sum(relay_joins_total{result="expired_code"}) > 0"#,
        r#"sum(relay_frames_relayed_total{path="redis"}) >= 136"#,
        r#"sum(relay_frames_relayed_total{path="local"}) >= 136"#,
        r#"sum(relay_frame_latency_seconds_count{path="redis"}) > 0"#,
        r#"sum(relay_frame_latency_seconds_count{path="local"}) > 0"#,
    ] {
        prom.wait_for(done).await;
    }
    let end = now() + 1.0;

    // The dashboard's variables, resolved as Grafana would: a query
    // variable takes its first value, or its "All" value where it has one.
    let mut checked = 0;
    let mut empty = Vec::new();
    for entry in std::fs::read_dir(repo().join("deploy/grafana")).expect("deploy/grafana") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read dashboard");
        let dashboard: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        let mut vars: Vec<(String, String)> = Vec::new();
        for v in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = v["name"].as_str().expect("variable name").to_owned();
            if v["type"] != "query" {
                continue;
            }
            let query = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .expect("variable query");
            let query = substitute(query, &vars);
            let values = label_values(&prom, &query, start, end).await;
            assert!(
                !values.is_empty(),
                "{}: variable {name} ({query}) has no values",
                path.display()
            );
            let value = match v["allValue"].as_str() {
                Some(all) if v["includeAll"] == true => all.to_owned(),
                _ => values[0].clone(),
            };
            vars.push((name, value));
        }

        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                let promql = substitute(expr, &vars);
                assert!(
                    !promql.contains('$'),
                    "{}: panel {:?} uses an unknown variable: {promql}",
                    path.display(),
                    panel["title"]
                );
                let data = prom
                    .api(&format!(
                        "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step=1",
                        encode(&promql)
                    ))
                    .await;
                checked += 1;
                if !has_a_number(&data) {
                    empty.push(format!("{:?}: {promql}", panel["title"]));
                }
            }
        }
    }
    assert!(checked > 0, "no dashboard query in deploy/grafana/");
    assert!(
        empty.is_empty(),
        "{} of {checked} dashboard queries returned no data:\n{}",
        empty.len(),
        empty.join("\n")
    );

    // Every rule of the rules file is loaded and evaluates without error.
    let rules_text =
        std::fs::read_to_string(repo().join("deploy/prometheus/relay-rules.yml")).expect("rules");
    let expected = rules_text
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("- alert:") || l.starts_with("- record:")
        })
        .count();
    let deadline = Instant::now() + WAIT;
    loop {
        let data = prom.api("/api/v1/rules").await;
        let rules: Vec<Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert_eq!(rules.len(), expected, "rules loaded: {data}");
        let bad: Vec<&Value> = rules.iter().filter(|r| r["health"] != "ok").collect();
        if bad.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline && bad.iter().all(|r| r["health"] == "unknown"),
            "rules that do not evaluate: {bad:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The clients stayed up throughout.
    exchange(&mut local, 100).await;
    exchange(&mut cross, 100).await;
}

/// The values of a Grafana `label_values(...)` variable query, from the
/// series Prometheus holds between `start` and `end`.
async fn label_values(prom: &Prometheus, query: &str, start: f64, end: f64) -> Vec<String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("only label_values(...) variables are supported: {query}"));
    let (selector, label) = match inner.rsplit_once(',') {
        Some((s, l)) => (s.trim().to_owned(), l.trim().to_owned()),
        None => ("{__name__=~\".+\"}".to_owned(), inner.trim().to_owned()),
    };
    let data = prom
        .api(&format!(
            "/api/v1/series?match[]={}&start={start:.3}&end={end:.3}",
            encode(&selector)
        ))
        .await;
    let mut values: Vec<String> = data
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s[&label].as_str().map(str::to_owned))
        .collect();
    values.sort();
    values.dedup();
    values
}

/// Whether a query_range answer holds at least one sample that is a number.
fn has_a_number(data: &Value) -> bool {
    data["result"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|series| {
            series["values"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v[1].as_str().is_some_and(|s| s != "NaN"))
        })
}
