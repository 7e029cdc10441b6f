//! `guess`: a guessing attack and an honest person beside it (issue 16).
//! Each `--source` address is one guesser: it holds a connection to every
//! `--url` and sends wrong codes as fast as the relay's join rate allows
//! (over it, `RATE_LIMITED`: it waits a little and tries again). Meanwhile a
//! person, from the default address, registers on one node and joins on the
//! next, once a second, and each pairing is timed. The report gives the
//! guess rate the relay let through (steady: each guesser's guesses after
//! its first `RATE_LIMITED`, i.e. past its burst, over the time since), the
//! honest pairings' times and failures, the code length in force and the
//! expected time for the guessers to hit any of 10,000 live codes at that
//! rate: 28^length / 10,000 / rate.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::SinkExt;
use relay_protocol::code::{ALPHABET, CODE_LEN};
use tokio_tungstenite::tungstenite::Message;

use super::pairs::{self, Ws};
use super::{Args, Report};

/// Live codes the expected time to a hit is given for.
const LIVE_CODES: f64 = 10_000.0;

/// How long a guesser waits after `RATE_LIMITED` before its next guess.
const LIMITED_PAUSE: Duration = Duration::from_millis(500);

/// How often the person pairs.
const HONEST_EVERY: Duration = Duration::from_secs(1);

/// Longest one answer may take before the run fails.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// What the guessers and the person share.
#[derive(Default)]
struct Tally {
    /// Wrong guesses answered (`INVALID_CODE`).
    wrong: AtomicU64,
    /// Guesses refused by the join rate.
    limited: AtomicU64,
    /// Length of the last code the person was given (what guessers guess).
    code_len: AtomicUsize,
}

pub(super) async fn guess(args: &Args) -> anyhow::Result<Report> {
    if args.source.is_empty() {
        bail!("guess needs --source addresses, one per guesser (e.g. 127.0.0.2,127.0.0.3)");
    }
    let tally = Arc::new(Tally {
        code_len: AtomicUsize::new(CODE_LEN),
        ..Tally::default()
    });
    let end = tokio::time::Instant::now() + args.duration;
    let mut guessers = Vec::new();
    for &source in &args.source {
        for url in &args.urls {
            let g = guesser(url.clone(), source, Arc::clone(&tally), end);
            guessers.push(tokio::spawn(g));
        }
    }
    let honest = person(args, &tally, end).await;
    let mut problems = Vec::new();
    // The guessers' steady rates, summed: guesses a second past the burst.
    let mut rate = 0.0;
    for g in guessers {
        match g.await? {
            Ok(Some((n, secs))) if secs > 0.0 => rate += n as f64 / secs,
            Ok(_) => {}
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    let (mut times, failures) = honest?;
    if !problems.is_empty() {
        bail!("{} guessers failed: {}", problems.len(), problems[0]);
    }
    times.sort_by(f64::total_cmp);
    let len = tally.code_len.load(Ordering::Relaxed);
    let mut r = Report::new("guess", &args.label);
    r.add("guessers", args.source.len() as u64, "addresses");
    r.add("nodes", args.urls.len() as u64, "");
    r.add("seconds", args.duration.as_secs_f64(), "s");
    r.add("wrong_guesses", tally.wrong.load(Ordering::Relaxed), "");
    r.add("rate_limited", tally.limited.load(Ordering::Relaxed), "");
    r.add("guesses_per_minute", rate * 60.0, "/min");
    r.add("honest_pairings", times.len() as u64, "");
    r.add("honest_failures", failures, "");
    r.add("honest_p50_ms", quantile(&times, 0.5) * 1e3, "ms");
    r.add(
        "honest_max_ms",
        times.last().copied().unwrap_or(0.0) * 1e3,
        "ms",
    );
    r.add("code_length", len as u64, "characters");
    r.add(
        "expected_days_to_hit_any_of_10000",
        expected_secs(len, rate) / 86_400.0,
        "days",
    );
    r.add(
        "expected_minutes_if_6_characters",
        expected_secs(CODE_LEN, rate) / 60.0,
        "min",
    );
    Ok(r)
}

/// Seconds until guesses at `rate` a second hit one of [`LIVE_CODES`] codes
/// of `len` characters, on average.
fn expected_secs(len: usize, rate: f64) -> f64 {
    let space = (ALPHABET.len() as f64).powi(len as i32);
    if rate > 0.0 {
        space / LIVE_CODES / rate
    } else {
        f64::INFINITY
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// One address guessing on one node until `end`; its wrong guesses past
/// its burst (after its first `RATE_LIMITED`) and the seconds since, if it
/// was ever limited.
async fn guesser(
    url: String,
    source: IpAddr,
    tally: Arc<Tally>,
    end: tokio::time::Instant,
) -> anyhow::Result<Option<(u64, f64)>> {
    let mut limited_at = None;
    let mut late = 0u64;
    let mut ws = pairs::connect_from(&url, "/browser", Some(source)).await?;
    while tokio::time::Instant::now() < end {
        let len = tally.code_len.load(Ordering::Relaxed);
        let code = nanoid::format(nanoid::rngs::default, &ALPHABET, len);
        let answer = ask(&mut ws, &format!(r#"{{"type":"join","code":"{code}"}}"#)).await;
        let answer = match answer {
            Ok(a) => a,
            // Closed (e.g. too many refusals in a row): a guesser just reconnects.
            Err(_) => {
                ws = pairs::connect_from(&url, "/browser", Some(source)).await?;
                continue;
            }
        };
        match answer["code"].as_str() {
            Some("INVALID_CODE" | "EXPIRED_CODE") => {
                tally.wrong.fetch_add(1, Ordering::Relaxed);
                if limited_at.is_some() {
                    late += 1;
                }
            }
            Some("RATE_LIMITED") => {
                tally.limited.fetch_add(1, Ordering::Relaxed);
                limited_at.get_or_insert_with(Instant::now);
                tokio::time::sleep(LIMITED_PAUSE).await;
            }
            _ if answer["type"] == "joined" => bail!("a guess joined a session: {answer}"),
            _ => bail!("a guess was answered {answer}"),
        }
    }
    Ok(limited_at.map(|t| (late, t.elapsed().as_secs_f64())))
}

/// Sends `msg` and reads the answer, within [`ANSWER_WAIT`].
async fn ask(ws: &mut Ws, msg: &str) -> anyhow::Result<serde_json::Value> {
    ws.send(Message::text(msg)).await?;
    tokio::time::timeout(ANSWER_WAIT, pairs::next_json(ws))
        .await
        .context("no answer in time")?
}

/// The person: pairs once a second (mac on one node, browser on the next)
/// until `end`; the pairing times in seconds, and the failures.
async fn person(
    args: &Args,
    tally: &Tally,
    end: tokio::time::Instant,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let mut times = Vec::new();
    let mut failures = 0;
    let mut tick = tokio::time::interval(HONEST_EVERY);
    let mut i = 0;
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let mac_url = &args.urls[i % args.urls.len()];
        let browser_url = &args.urls[(i + 1) % args.urls.len()];
        i += 1;
        let t0 = Instant::now();
        match pair_once(mac_url, browser_url, tally).await {
            Ok(()) => times.push(t0.elapsed().as_secs_f64()),
            Err(e) => {
                failures += 1;
                if !args.quiet {
                    eprintln!("relay-load: guess: an honest pairing failed: {e:#}");
                }
            }
        }
    }
    Ok((times, failures))
}

/// Registers on `mac_url`, joins on `browser_url` (both from the default
/// address), and notes the code's length for the guessers.
async fn pair_once(mac_url: &str, browser_url: &str, tally: &Tally) -> anyhow::Result<()> {
    let mut mac = pairs::connect_from(mac_url, "/mac", None).await?;
    let reg = ask(&mut mac, r#"{"type":"register"}"#).await?;
    let code = reg["code"]
        .as_str()
        .with_context(|| format!("register answered {reg}"))?;
    tally.code_len.store(code.len(), Ordering::Relaxed);
    let mut browser = pairs::connect_from(browser_url, "/browser", None).await?;
    let joined = ask(
        &mut browser,
        &format!(r#"{{"type":"join","code":"{code}"}}"#),
    )
    .await?;
    if joined["type"] != "joined" {
        bail!("join answered {joined}");
    }
    let _ = mac.close(None).await;
    let _ = browser.close(None).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_time_is_the_code_space_over_live_codes_and_rate() {
        // 1,500 guesses a minute: 32 minutes for 6 characters, 17 days for 8.
        let rate = 1_500.0 / 60.0;
        assert!((expected_secs(6, rate) / 60.0 - 32.1).abs() < 0.1);
        assert!((expected_secs(8, rate) / 86_400.0 - 17.5).abs() < 0.1);
        assert!(expected_secs(6, 0.0).is_infinite());
        assert_eq!(quantile(&[1.0, 2.0, 3.0], 0.5), 2.0);
    }
}
