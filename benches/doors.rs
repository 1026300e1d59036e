//! The front doors' benchmarks, printing the figures the README quotes.
//!
//! Parts:
//! - `sends`: Twilio's Messages API on the real service binary (a child process), Postgres, each `201`
//!   only once its message is durable: accepted sends/s with 64 clients on keep-alive connections, then
//!   the response time at half that rate, open model (each request at its planned time, latency from that
//!   time).
//! - `webhooks`: the webhook sender alone (Twilio's signed form callbacks, one lifecycle each) to a fast
//!   local receiver (a child process): deliveries/s; first its floor, bare posts of the same bodies
//!   from one thread with reqwest and with the sender's own client (hyper's; `BENCH_FLOOR_AT_ONCE=0`
//!   skips the floor).
//! - `slow`: the same to a receiver that answers each webhook after 500 ms: deliveries in flight at once,
//!   deliveries/s, and memory per delivery in flight.
//! - `wiremock`: WireMock (`org.wiremock:wiremock-standalone` from Maven Central, in its own JVM) sending
//!   one webhook per request it serves to the same receivers, default settings and tuned.
//!
//!     cargo bench --bench doors                     # every part, sends on tansu
//!     cargo bench --bench doors -- --broker apache sends
//!     BENCH_CLIENTS=256 cargo bench --bench doors -- sends
//!     BENCH_WEBHOOKS=100000 cargo bench --bench doors -- webhooks

#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)] // shared with the other benches
mod support;

/// The service's allocator (`src/main.rs`), so that the webhook sender, which runs in this process, is
/// measured on it (with mimalloc's default purge delay; the service sets 10 s).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use understudy::model::{AckEvent, Channel, Status, event_id, vendor_message_id};
use understudy::sink::webhook::{Target, WebhookSender};
use understudy::store::Store;
use understudy::wire::Vendor;

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn form(i: u64) -> String {
    format!("To=%2B1555{:07}&From=%2B15005550006&Body=bench+message+{i}", i % 10_000_000)
}

/// Clients sending at once in the closed model: `BENCH_CLIENTS`, 64 unless set. A door's group commit
/// takes what is waiting, so this is also the largest write the store gets.
fn clients() -> usize {
    std::env::var("BENCH_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

/// One Twilio send: true when it is answered `want` (201 from the door).
async fn send_one(client: &reqwest::Client, url: &str, i: u64, want: u16) -> bool {
    let r = client
        .post(url)
        .basic_auth(ACCOUNT, Some("token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(i))
        .send()
        .await;
    matches!(r, Ok(r) if r.status().as_u16() == want)
}

/// `clients` keep-alive clients sending back to back for `seconds`, each request numbered from `next`:
/// (answered `want`, sent, sorted latencies in ms, elapsed seconds).
async fn closed_loop(
    client: &reqwest::Client,
    url: &Arc<String>,
    next: &Arc<AtomicU64>,
    clients: usize,
    seconds: u64,
    want: u16,
) -> (u64, u64, Vec<f64>, f64) {
    let accepted = Arc::new(AtomicU64::new(0));
    let first = next.load(Ordering::Relaxed);
    let t = Instant::now();
    let until = t + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, next, accepted) = (client.clone(), url.clone(), next.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let s = Instant::now();
                if send_one(&client, &url, i, want).await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    lat.push(s.elapsed().as_secs_f64() * 1e3);
                }
            }
            lat
        }));
    }
    let mut lat: Vec<f64> = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = t.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    (accepted.load(Ordering::Relaxed), next.load(Ordering::Relaxed) - first, lat, secs)
}

/// The floor under the sends: the same clients and requests to a bare actix-web server on as many workers
/// as the service's doors, answering each at once with no work behind it. What this machine can do over
/// HTTP/1.1 with the client on the same cores; the doors can only come below it.
async fn http_floor(seconds: u64) {
    let receiver = Receiver::start_with_workers(0, 2);
    let url = Arc::new(format!("http://127.0.0.1:{}/2010-04-01/Accounts/{ACCOUNT}/Messages.json", receiver.port));
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).build().unwrap();
    let clients = clients();
    let (server0, _) = support::proc_usage(receiver.child.id());
    let (bench0, _) = support::proc_usage(std::process::id());
    let (n, _, lat, secs) = closed_loop(&client, &url, &Arc::new(AtomicU64::new(0)), clients, seconds, 200).await;
    let (server1, _) = support::proc_usage(receiver.child.id());
    let (bench1, _) = support::proc_usage(std::process::id());
    println!(
        "  HTTP floor: the same {clients} clients and sends to a bare actix-web server (2 workers) answering at once:"
    );
    println!(
        "    answered          {:>10.0} requests/s, p50 {:.1} ms, p99 {:.1} ms; CPU per request: server {:.1} µs, bench {:.1} µs",
        n as f64 / secs,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        (server1 - server0) * 1e6 / n as f64,
        (bench1 - bench0) * 1e6 / n as f64,
    );
}

/// Wait for the doors to answer at `base`.
async fn wait_for_doors(base: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(format!("{base}/ready")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the doors did not open at {base}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Accepted sends/s, closed model, then the response time at half that rate, open model.
async fn sends(dir: &Path, brokers: &str, seconds: u64) {
    let url = support::fresh_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/zero-delay.yaml");
    support::create_topics(brokers, "doors").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let svc = support::start_service(
        dir,
        brokers,
        &url,
        &scenario,
        "doors",
        &format!("http:\n  listen_addr: \"127.0.0.1:{port}\"\n  workers: 2\n  instance: bench\n"),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_for_doors(&base).await;
    let send_url = Arc::new(format!("{base}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"));
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).build().unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let clients = clients();
    let (cpu0, _) = support::proc_usage(svc.child.id());
    let (bench0, _) = support::proc_usage(std::process::id());
    let (pg0, pg_pids) = postgres_cpu();
    let (n, sent, lat, secs) = closed_loop(&client, &send_url, &next, clients, seconds, 201).await;
    let (cpu1, rss) = support::proc_usage(svc.child.id());
    let (bench1, _) = support::proc_usage(std::process::id());
    let (pg1, _) = postgres_cpu();
    let rate = n as f64 / secs;
    println!("  Twilio door, {clients} clients, {seconds} s, each 201 after its message is durable in Postgres:");
    println!("    accepted          {rate:>10.0} sends/s ({n} of {sent} answered 201)");
    println!(
        "    response time     p50 {:.1} ms, p99 {:.1} ms (closed model: {clients} in flight)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!(
        "    service CPU       {:>10.1} µs per send; RSS {:.0} MiB",
        (cpu1 - cpu0) * 1e6 / n as f64,
        rss as f64 / 1048576.0
    );
    println!(
        "    other CPU         {:>10.1} µs per send in Postgres ({pg_pids} processes), {:.1} µs in this bench",
        (pg1 - pg0) * 1e6 / n as f64,
        (bench1 - bench0) * 1e6 / n as f64,
    );

    // Half that rate, open model: each request at its planned time, its latency from that time.
    let half = (rate / 2.0).max(1.0);
    let total = (half * seconds as f64) as u64;
    let t0 = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    let offset = next.load(Ordering::Relaxed) + 1;
    for k in 0..total {
        let at = t0 + Duration::from_secs_f64(k as f64 / half);
        tokio::time::sleep_until(at).await;
        let (client, url) = (client.clone(), send_url.clone());
        handles.push(tokio::spawn(async move {
            let ok = send_one(&client, &url, offset + k, 201).await;
            (ok, at.elapsed().as_secs_f64() * 1e3)
        }));
    }
    let mut open = Vec::with_capacity(handles.len());
    let mut failed = 0;
    for h in handles {
        let (ok, ms) = h.await.unwrap();
        if ok {
            open.push(ms);
        } else {
            failed += 1;
        }
    }
    open.sort_by(f64::total_cmp);
    println!(
        "    at half rate      {half:.0} sends/s for {seconds} s: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({failed} not 201)",
        percentile(&open, 0.5),
        percentile(&open, 0.9),
        percentile(&open, 0.99),
        open.last().copied().unwrap_or(f64::NAN)
    );
    let stored = store.totals().await.unwrap().messages as u64;
    let answered = n + open.len() as u64;
    println!("    stored            {stored} messages for {answered} 201s");
    assert!(stored >= answered, "every 201 is a stored message");
    support::stop(svc);
    store.close().await;
    support::drop_database(&url).await;
}

/// CPU seconds used so far by every process named `postgres` (the server and its backends; backends that
/// ended are not counted), and how many there are.
fn postgres_cpu() -> (f64, usize) {
    let mut total = 0.0;
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres") {
            total += support::proc_usage(pid).0;
            n += 1;
        }
    }
    (total, n)
}

/// A receiver in a child process (this binary again): answers every POST 200 after `delay_ms`; prints
/// its port, then serves `GET /stats` as `count peak_in_flight first_ms last_ms`.
fn receiver_child(delay_ms: u64, workers: usize) {
    use actix_web::{App, HttpResponse, HttpServer, web};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);
    static PEAK: AtomicI64 = AtomicI64::new(0);
    static FIRST: AtomicU64 = AtomicU64::new(u64::MAX);
    static LAST: AtomicU64 = AtomicU64::new(0);
    let start = Instant::now();
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .route(
                    "/stats",
                    web::get().to(|| async {
                        HttpResponse::Ok().body(format!(
                            "{} {} {} {}",
                            COUNT.load(Ordering::SeqCst),
                            PEAK.load(Ordering::SeqCst),
                            FIRST.load(Ordering::SeqCst),
                            LAST.load(Ordering::SeqCst)
                        ))
                    }),
                )
                .default_service(web::to(move |_body: web::Bytes| async move {
                    let n = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
                    PEAK.fetch_max(n, Ordering::SeqCst);
                    if delay_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    }
                    let at = start.elapsed().as_millis() as u64;
                    FIRST.fetch_min(at, Ordering::SeqCst);
                    LAST.fetch_max(at, Ordering::SeqCst);
                    COUNT.fetch_add(1, Ordering::SeqCst);
                    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
                    HttpResponse::Ok().finish()
                }))
        })
        .workers(workers)
        .backlog(16_384)
        .max_connections(100_000)
        .bind("127.0.0.1:0")
        .unwrap();
        println!("{}", server.addrs()[0].port());
        server.run().await.unwrap();
    });
}

struct Receiver {
    child: std::process::Child,
    port: u16,
}

impl Receiver {
    fn start(delay_ms: u64) -> Self {
        Self::start_with_workers(delay_ms, 1)
    }

    fn start_with_workers(delay_ms: u64, workers: usize) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env("BENCH_RECEIVER", delay_ms.to_string())
            .env("BENCH_RECEIVER_WORKERS", workers.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        Self { child, port: line.trim().parse().expect("the receiver's port") }
    }

    /// (received, peak in flight, first, last ms).
    async fn stats(&self) -> (u64, i64, u64, u64) {
        let s = reqwest::get(format!("http://127.0.0.1:{}/stats", self.port)).await.unwrap().text().await.unwrap();
        let f: Vec<u64> = s.split(' ').map(|v| v.parse().unwrap_or(0)).collect();
        (f[0], f[1] as i64, f[2], f[3])
    }

    async fn wait_for(&self, n: u64, within: Duration) -> (u64, i64, u64, u64) {
        let deadline = Instant::now() + within;
        loop {
            let s = self.stats().await;
            if s.0 >= n || Instant::now() > deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn event(i: u64) -> AckEvent {
    let payload_id: Arc<str> = format!("bench-{i}").into();
    AckEvent {
        event_id: event_id(&payload_id, Status::Delivery, 1),
        vendor_message_id: vendor_message_id(Channel::Sms, &payload_id),
        payload_id,
        batch_id: "bench".into(),
        channel: Channel::Sms,
        status: Status::Delivery,
        attempt: 1,
        scheduled_at: chrono::Utc::now(),
        emitted_at: chrono::Utc::now(),
        error_code: None,
        error_reason: None,
        bounce_type: None,
        tenant_id: Some(ACCOUNT.into()),
        fault: None,
    }
}

/// The webhook sender alone: `n` Twilio status callbacks, each of its own lifecycle, to a receiver that
/// answers after `delay_ms`. Runs on an actix system, as in the service. `store`: every attempt is also
/// written to this Postgres database (`webhook_attempts`), as the service does.
fn webhook_sink(n: u64, delay_ms: u64, in_flight: usize, store: Option<&str>) {
    let receiver = Receiver::start(delay_ms);
    let url: Arc<str> = format!("http://127.0.0.1:{}/twilio/status", receiver.port).into();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rss0 = support::proc_usage(std::process::id()).1;
    let receiver_pid = receiver.child.id();
    let (delivered, peak_sender, peak_rss, secs, cpu, receiver_cpu0) = actix::System::new().block_on(async {
        let http = understudy::config::HttpSettings {
            webhooks_in_flight: in_flight,
            listen_addr: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        };
        let sns = Arc::new(understudy::sink::sns::Sns::from_settings(&http).unwrap());
        let arbiter = actix::Arbiter::new();
        let store = match store {
            Some(url) => Some(understudy::store::Store::connect(url, 2).await.expect("the benchmark's store")),
            None => None,
        };
        let (sender, mut rows) = WebhookSender::new(arbiter.handle(), 1.0, &http, sns, store.clone());
        let (unforwarded, room) = sender.forwarding();
        let done = Arc::new(AtomicU64::new(0));
        let counted = done.clone();
        // The persister's side: take the rows, give their room back.
        actix::spawn(async move {
            let mut buf = Vec::with_capacity(1000);
            while rows.recv_many(&mut buf, 1000).await > 0 {
                let k = buf.len();
                buf.clear();
                unforwarded.fetch_sub(k as i64, Ordering::SeqCst);
                room.add_permits(k);
                counted.fetch_add(k as u64, Ordering::SeqCst);
            }
        });
        // From here: the sender's setup (its SNS and SendGrid keys) is not counted.
        let (cpu0, _) = support::proc_usage(std::process::id());
        let (receiver_cpu0, _) = support::proc_usage(receiver_pid);
        let t = Instant::now();
        let (mut peak, mut peak_rss) = (0i64, 0u64);
        for i in 0..n {
            let permit = sender.room().await;
            let target = Arc::new(Target::new(Vendor::Twilio, url.clone(), "token".into()));
            sender.deliver(permit, event(i), "+15550100".into(), target, None);
            if i % 1000 == 0 {
                peak = peak.max(sender.in_flight());
                peak_rss = peak_rss.max(support::proc_usage(std::process::id()).1);
            }
        }
        while done.load(Ordering::SeqCst) < n {
            peak = peak.max(sender.in_flight());
            peak_rss = peak_rss.max(support::proc_usage(std::process::id()).1);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // With a store, the last attempts are written too.
        sender.flush_attempts().await;
        let secs = t.elapsed().as_secs_f64();
        // Up to here: not the reading back of the stored rows below.
        let cpu = support::proc_usage(std::process::id()).0 - cpu0;
        if let Some(s) = &store {
            let stored = s.attempts().await.map_or(0, |a| a.len());
            println!("    attempts stored   {stored} rows in webhook_attempts");
        }
        arbiter.stop();
        (done.load(Ordering::SeqCst), peak, peak_rss, secs, cpu, receiver_cpu0)
    });
    let (received, peak_receiver, first, last) = rt.block_on(receiver.wait_for(n, Duration::from_secs(10)));
    let (receiver_cpu1, _) = support::proc_usage(receiver_pid);
    let span = (last.saturating_sub(first)) as f64 / 1e3;
    let what =
        if delay_ms == 0 { "a fast receiver".to_owned() } else { format!("a receiver answering in {delay_ms} ms") };
    println!(
        "  webhook sender, {n} Twilio status callbacks (signed, form-encoded) to {what}, at most {in_flight} in flight:"
    );
    println!(
        "    delivered         {:>10.0} webhooks/s ({delivered} done in {secs:.2} s; the receiver got {received})",
        delivered as f64 / secs
    );
    let (sender_us, receiver_us) = (cpu * 1e6 / n as f64, (receiver_cpu1 - receiver_cpu0) * 1e6 / n as f64);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "    CPU               {sender_us:>10.1} µs per webhook (sender), {receiver_us:.1} µs (receiver): {:.1} µs together; {cores} cores' CPU allows at most {:.0} webhooks/s (a bound: the sender's deliveries run on one thread)",
        sender_us + receiver_us,
        cores as f64 * 1e6 / (sender_us + receiver_us)
    );
    if delay_ms > 0 {
        let per = (peak_rss.saturating_sub(rss0)) as f64 / peak_sender.max(1) as f64;
        println!(
            "    in flight         {peak_sender} at once (the receiver saw {peak_receiver}); memory {:.1} KiB per delivery in flight ({:.0} MiB RSS at the peak)",
            per / 1024.0,
            peak_rss as f64 / 1048576.0
        );
        let _ = span;
    }
}

/// A Twilio status callback's body, of the size and shape the sender posts.
const CALLBACK: &str = "AccountSid=AC0123456789abcdef0123456789abcdef&ApiVersion=2010-04-01&From=%2B15550100\
&MessageSid=SMf0e1d2c3b4a5968778695a4b3c2d1e0f&MessageStatus=delivered&SmsSid=SMf0e1d2c3b4a5968778695a4b3c2d1e0f\
&SmsStatus=delivered&To=%2B15550123";

/// A signature header's size, not checked by the receiver.
const SIGNATURE: &str = "bm90IGEgc2lnbmF0dXJlLCBhIGZsb29y";

/// The floor under the webhook sender: `n` posts of a callback-shaped body to the same receiver from one
/// thread (the sender runs its deliveries on one arbiter), `at_once` in flight, with nothing behind them:
/// no lifecycle, no signature, no ordering, no rows. First with reqwest (the sender's client until
/// 2026-12-03, and the load generator's), then with the sender's own ([`understudy::sink::http`], hyper's
/// pooled client, which reqwest wraps). The sender can only come below the second.
fn webhook_floor(n: u64, at_once: usize) {
    use understudy::sink::http;
    let receiver = Receiver::start(0);
    let url = format!("http://127.0.0.1:{}/twilio/status", receiver.port);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let body = bytes::Bytes::from_static(CALLBACK.as_bytes());
    println!(
        "  webhook floor: {n} posts of a callback's body from one thread, {at_once} at once, to the same receiver:"
    );
    for client in ["reqwest", "hyper"] {
        let with_reqwest = client == "reqwest";
        let next = Arc::new(AtomicU64::new(0));
        let (cpu0, _) = support::proc_usage(std::process::id());
        let (receiver_cpu0, _) = support::proc_usage(receiver.child.id());
        let t = Instant::now();
        let ok: u64 = rt.block_on(async {
            let reqwest = reqwest::Client::builder().pool_max_idle_per_host(at_once).build().unwrap();
            let hyper = http::Client::new(at_once, Duration::from_secs(10));
            let uri = http::Url::parse(&url);
            let tasks: Vec<_> = (0..at_once)
                .map(|_| {
                    let (next, reqwest, hyper, uri, url, body) =
                        (next.clone(), reqwest.clone(), hyper.clone(), uri.clone(), url.clone(), body.clone());
                    tokio::spawn(async move {
                        let mut ok = 0u64;
                        while next.fetch_add(1, Ordering::Relaxed) < n {
                            let answered = if with_reqwest {
                                match reqwest
                                    .post(&url)
                                    .header("content-type", "application/x-www-form-urlencoded")
                                    .header("x-twilio-signature", SIGNATURE)
                                    .body(body.clone())
                                    .send()
                                    .await
                                {
                                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                                    Err(_) => false,
                                }
                            } else {
                                let headers = [("x-twilio-signature", SIGNATURE.to_owned())];
                                let sent =
                                    hyper.post(&uri, "application/x-www-form-urlencoded", &headers, body.clone()).await;
                                matches!(sent, Ok(200..=299))
                            };
                            ok += u64::from(answered);
                        }
                        ok
                    })
                })
                .collect();
            let mut ok = 0;
            for t in tasks {
                ok += t.await.unwrap();
            }
            ok
        });
        let secs = t.elapsed().as_secs_f64();
        let (cpu1, _) = support::proc_usage(std::process::id());
        let (receiver_cpu1, _) = support::proc_usage(receiver.child.id());
        println!(
            "    {client:<8}          {:>10.0} requests/s ({ok} answered in {secs:.2} s), {:.1} µs CPU per request (this process), {:.1} µs (receiver)",
            ok as f64 / secs,
            (cpu1 - cpu0) * 1e6 / n as f64,
            (receiver_cpu1 - receiver_cpu0) * 1e6 / n as f64
        );
    }
}

/// WireMock's own webhooks: a stub whose every hit posts one webhook to the receiver; `n` requests from
/// 64 clients, then the time until the receiver has them all.
async fn wiremock(n: u64, delay_ms: u64, tuned: bool) {
    let jar = support::wiremock_jar();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut args = vec!["--port".to_owned(), port.to_string(), "--disable-banner".into()];
    if tuned {
        for a in [
            "--webhook-threadpool-size",
            "200",
            "--no-request-journal",
            "--disable-request-logging",
            "--container-threads",
            "100",
        ] {
            args.push(a.into());
        }
    }
    let mut child = std::process::Command::new(common::kafka::java())
        .arg("-jar")
        .arg(&jar)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("java runs WireMock");
    let receiver = Receiver::start(delay_ms);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(format!("{base}/__admin/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "WireMock did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stub = serde_json::json!({
        "request": {"method": "POST", "urlPath": format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json")},
        "response": {"status": 201, "jsonBody": {"sid": "SM00000000000000000000000000000000", "status": "queued"}},
        "serveEventListeners": [{"name": "webhook", "parameters": {
            "method": "POST",
            "url": format!("http://127.0.0.1:{}/twilio/status", receiver.port),
            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            "body": "MessageSid=SM00000000000000000000000000000000&MessageStatus=delivered"
        }}]
    });
    client
        .post(format!("{base}/__admin/mappings"))
        .header("content-type", "application/json")
        .body(stub.to_string())
        .send()
        .await
        .unwrap();
    let url = Arc::new(format!("{base}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"));
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                send_one(&client, &url, i, 201).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sent_in = t.elapsed().as_secs_f64();
    let (received, peak, _, _) = receiver.wait_for(n, Duration::from_secs(120)).await;
    let secs = t.elapsed().as_secs_f64();
    let how = if tuned { "tuned (200 webhook threads, 100 container threads, no journal)" } else { "default settings" };
    let what =
        if delay_ms == 0 { "a fast receiver".to_owned() } else { format!("a receiver answering in {delay_ms} ms") };
    println!("  WireMock 3.13.2, {how}: {n} requests, a webhook each, to {what}:");
    println!(
        "    delivered         {:>10.0} webhooks/s ({received} in {secs:.2} s; the requests took {sent_in:.2} s; {peak} in flight at most)",
        received as f64 / secs
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    if let Ok(delay) = std::env::var("BENCH_RECEIVER") {
        let workers = std::env::var("BENCH_RECEIVER_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
        return receiver_child(delay.parse().unwrap_or(0), workers);
    }
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let webhooks: u64 = std::env::var("BENCH_WEBHOOKS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let slow: u64 = std::env::var("BENCH_SLOW_WEBHOOKS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let wm: u64 = std::env::var("BENCH_WIREMOCK").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let dir = tempfile::tempdir().unwrap();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    if support::wanted("sends") {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        println!("understudy front-door benchmarks ({cores} cores): the floor, no service");
        rt.block_on(http_floor(seconds));
        for k in support::brokers() {
            let broker = support::start(k);
            println!("understudy front-door benchmarks ({cores} cores), {}, Postgres", support::describe(k));
            rt.block_on(sends(dir.path(), &broker.bootstrap(), seconds));
            drop(broker);
        }
    }
    println!("understudy webhook benchmarks ({cores} cores); no broker: the sender alone");
    // The sender records its metrics as in the service, into a Prometheus exporter, not into nothing.
    understudy::telemetry::init_metrics("127.0.0.1:0".parse().unwrap()).expect("the metrics exporter");
    let in_flight = std::env::var("BENCH_IN_FLIGHT").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    if support::wanted("webhooks") {
        let at_once = std::env::var("BENCH_FLOOR_AT_ONCE").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
        if at_once > 0 {
            webhook_floor(webhooks, at_once);
        }
        webhook_sink(webhooks, 0, in_flight, None);
    }
    if support::wanted("stored") {
        // The same, with every attempt stored in Postgres, as the service does.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let url = rt.block_on(support::fresh_database());
        webhook_sink(webhooks, 0, in_flight, Some(&url));
        rt.block_on(support::drop_database(&url));
    }
    if support::wanted("slow") {
        webhook_sink(slow, 500, 10_000, None);
    }
    if support::wanted("wiremock") {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            wiremock(wm, 0, false).await;
            wiremock(wm, 0, true).await;
            wiremock(wm.min(5_000), 500, false).await;
            wiremock(wm.min(20_000), 500, true).await;
        });
    }
}
