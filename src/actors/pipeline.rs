//! Wires the stages together, sink end first so that nothing sends into a mailbox that does not exist
//! yet, and owns the one shutdown path: stop consuming, let due lifecycles finish, flush the producer,
//! write the last rows, commit the last offsets.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use rdkafka::consumer::{CommitMode, Consumer as _};
use tokio_util::sync::CancellationToken;

use super::channel::{ChannelActor, ChannelStats};
use super::lifecycle::LifecycleShared;
use super::persister::{Flush, Persister, PersisterStats};
use super::supervisor::{Health, StopStage};
use crate::config::Settings;
use crate::kafka::decode::Decoder;
use crate::kafka::offsets::{Assignments, OffsetTracker};
use crate::kafka::{self, admin};
use crate::model::Channel;
use crate::scenario::Scenario;
use crate::scenario::live::{LiveScenario, ReloadStats, watch_files};
use crate::sink::kafka::{Emitter, forward_deliveries};
use crate::sink::webhook::{Keys, WebhookSender};
use crate::source::kafka::{self as consumer, ConsumerActor, ConsumerLoop, ConsumerStats, KafkaConsumer};
use crate::store::Store;

/// A running pipeline.
pub struct Pipeline {
    shutdown: CancellationToken,
    health: Health,
    channels: [Addr<ChannelActor>; 3],
    consumer_actor: Addr<ConsumerActor>,
    consumer_done: Option<tokio::sync::oneshot::Receiver<()>>,
    consumer: Arc<KafkaConsumer>,
    tracker: Arc<OffsetTracker>,
    persister: Addr<Persister>,
    shared: Arc<LifecycleShared>,
    arbiters: Vec<Arbiter>,
    grace: Duration,
    pub consumer_stats: Arc<ConsumerStats>,
    pub persister_stats: Arc<PersisterStats>,
    pub channel_stats: Arc<ChannelStats>,
    live: LiveScenario,
    pub reload_stats: Arc<ReloadStats>,
    /// The front doors' server, when `http.listen_addr` is set.
    http: Option<crate::source::http::Server>,
    /// Where webhook deliveries run.
    webhook_arbiter: Option<Arbiter>,
}

/// A stage [`Pipeline::stop_stage`] can stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Persister,
    Channel(Channel),
    Consumer,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Http(#[from] crate::source::http::HttpError),
    #[error(transparent)]
    Sns(#[from] crate::sink::sns::SnsError),
}

impl Pipeline {
    /// Start every stage. The store must already be migrated; topics are created when configured so.
    pub async fn start(settings: &Settings, scenario: Arc<Scenario>, brokers: &str) -> Result<Self, PipelineError> {
        let k = &settings.kafka;
        if k.create_topics {
            admin::ensure_topics(k, brokers, &k.service_topics()).await?;
        }
        let tracker = Arc::new(OffsetTracker::default());
        let assignments = Arc::new(Assignments::default());
        let health = Health::default();
        let store_url = settings.store.url_or_default();
        // Fail early on a bad URL.
        Store::connect_lazy(&store_url, 1)?;

        // Sink end first: the persister, then the emitter that feeds it.
        let persister_arbiter = Arbiter::new();
        let (batch_rows, flush_interval) =
            (settings.store.batch_rows, Duration::from_millis(settings.store.flush_interval_ms));
        let (url, max_conn, t) = (store_url.clone(), settings.store.max_connections, tracker.clone());
        let (stats_tx, stats_rx) = std::sync::mpsc::channel();
        let guard = health.stage("persister");
        let persister = Persister::start_in_arbiter(&persister_arbiter.handle(), move |_| {
            let store = Store::connect_lazy(&url, max_conn).expect("checked above");
            let p = Persister::new(store, t, batch_rows, flush_interval).supervised(guard);
            let _ = stats_tx.send(p.stats());
            p
        });
        let persister_stats = stats_rx.recv().expect("persister started");
        let (emitter, delivered) =
            Emitter::new(&kafka::producer_config(k, brokers), &k.ack_topic).map_err(kafka::KafkaError::from)?;
        persister_arbiter.spawn(forward_deliveries(
            delivered,
            persister.clone(),
            batch_rows,
            emitter.unforwarded_counter(),
            emitter.room(),
            health.stage("ack hand-off"),
        ));

        // The webhook sender, when the front doors are open: deliveries on an arbiter of their own.
        // SNS's signer is shared by the sender (it signs) and the doors (they serve its certificate and
        // SubscribeURL).
        let sns = match settings.http.listen_addr {
            Some(_) => Some(Arc::new(crate::sink::sns::Sns::from_settings(&settings.http)?)),
            None => None,
        };
        let webhooks = sns.clone().map(|sns| {
            let arbiter = Arbiter::new();
            let (sender, delivered) = WebhookSender::new(
                arbiter.handle(),
                scenario.file.time_scale,
                &settings.http,
                sns,
                Some(Store::connect_lazy(&store_url, 2).expect("checked above")),
            );
            let (unforwarded, room) = sender.forwarding();
            arbiter.spawn(forward_deliveries(
                delivered,
                persister.clone(),
                batch_rows,
                unforwarded,
                room,
                health.stage("webhook hand-off"),
            ));
            (sender, arbiter)
        });
        let (webhooks, webhook_arbiter) = match webhooks {
            Some((s, a)) => (Some(s), Some(a)),
            None => (None, None),
        };
        let shared = Arc::new(LifecycleShared {
            webhooks,
            keys: Keys::from_settings(&settings.http),
            emitter,
            assignments: assignments.clone(),
            in_flight: AtomicI64::new(0),
            asleep: AtomicI64::new(0),
            hibernate_after_us: settings.service.hibernate_after_ms as i64 * 1000,
        });
        let channel_stats = Arc::new(ChannelStats::default());
        // The running scenario; a reload swaps it for every stage at once.
        let (scenario_tx, live) = tokio::sync::watch::channel(scenario.clone());
        let mut arbiters = vec![persister_arbiter];
        let mut channels: [Option<Addr<ChannelActor>>; 3] = [None, None, None];
        // Every channel has its actor, even one the scenario lacks: a reloaded version may add it.
        for ch in Channel::ALL {
            let arbiter = Arbiter::new();
            let (p, sh, st) = (persister.clone(), shared.clone(), channel_stats.clone());
            let guard = health.stage(format!("{ch} channel"));
            channels[ch.index()] = Some(ChannelActor::start_in_arbiter(&arbiter.handle(), move |_| {
                ChannelActor::new(ch, p, sh, st, guard)
            }));
            arbiters.push(arbiter);
        }

        // Source ends last: the front doors, then the consumer.
        let http = match sns {
            Some(sns) => {
                let store = Store::connect(&store_url, 2).await?;
                let channels = channels.clone().map(|c| c.expect("every channel has its actor"));
                let door =
                    crate::source::http::Door::open(&settings.http, &store, &assignments, channels, live.clone(), sns)
                        .await?;
                let control = crate::control::Control::new(settings, brokers, store.clone(), live.clone())
                    .map_err(crate::source::http::HttpError::Control)?;
                Some(crate::source::http::Server::start(door, control)?)
            }
            None => None,
        };
        let (kafka_consumer, assigned) = consumer::create(
            &kafka::consumer_config(k, brokers),
            &k.input_topics,
            tracker.clone(),
            assignments.clone(),
            persister.clone(),
            shared.emitter.clone(),
        )
        .map_err(kafka::KafkaError::from)?;
        let kafka_consumer = Arc::new(kafka_consumer);
        let dlq = kafka::dlq_producer_config(k, brokers).create().map_err(kafka::KafkaError::from)?;
        let shutdown = CancellationToken::new();
        let consumer_stats = Arc::new(ConsumerStats::default());
        let in_flight_shared = shared.clone();
        let channel_addrs = channels.clone().map(|c| c.expect("every channel has its actor"));
        let run = ConsumerLoop {
            consumer: kafka_consumer.clone(),
            assigned,
            decoder: Decoder::new(settings.input.clone()).with_rule_headers(scenario.rule_headers()),
            on_duplicate: settings.input.on_duplicate_payload_id,
            duplicate_window: settings.input.duplicate_window,
            tenants: settings.input.tenants.clone(),
            scenario: live.clone(),
            channels,
            dlq,
            dlq_topic: k.dlq_topic.clone(),
            dlq_room: Arc::new(tokio::sync::Semaphore::new(consumer::DLQ_IN_FLIGHT)),
            cluster_id: Arc::default(),
            tracker: tracker.clone(),
            assignments,
            persister: persister.clone(),
            store_url,
            max_batch: settings.service.max_batch,
            max_in_flight: settings.service.max_in_flight_lifecycles,
            in_flight: Arc::new(move || in_flight_shared.in_flight.load(Ordering::Relaxed).max(0) as usize),
            stats: consumer_stats.clone(),
            shutdown: shutdown.clone(),
        };
        let consumer_arbiter = Arbiter::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let guard = health.stage("consumer");
        let consumer_actor = ConsumerActor::start_in_arbiter(&consumer_arbiter.handle(), move |_| {
            ConsumerActor::new(run, done_tx, guard)
        });
        // Periodic commits of what the store has made durable.
        let (c, tr, every, stop) =
            (kafka_consumer.clone(), tracker.clone(), Duration::from_millis(k.commit_interval_ms), shutdown.clone());
        let guard = health.stage("offset commit");
        consumer_arbiter.spawn(async move {
            let _guard = guard;
            let mut tick = tokio::time::interval(every);
            let mut lag_at = Instant::now();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => consumer::commit(&c, &tr, CommitMode::Async),
                }
                if lag_at.elapsed() >= Duration::from_secs(5) {
                    lag_at = Instant::now();
                    let c = c.clone();
                    let _ = tokio::task::spawn_blocking(move || consumer::report_lag(&c)).await;
                }
            }
        });
        let reload_stats = Arc::new(ReloadStats::default());
        let every = Duration::from_millis(settings.scenario.reload_interval_ms);
        if !every.is_zero() && scenario.source.is_file() {
            consumer_arbiter.spawn(watch_files(scenario_tx, every, reload_stats.clone(), shutdown.clone()));
        }
        arbiters.push(consumer_arbiter);

        Ok(Self {
            shutdown,
            health,
            channels: channel_addrs,
            consumer_actor,
            consumer_done: Some(done_rx),
            consumer: kafka_consumer,
            tracker,
            persister,
            shared,
            arbiters,
            grace: Duration::from_millis(settings.service.shutdown_grace_ms),
            consumer_stats,
            persister_stats,
            channel_stats,
            live,
            reload_stats,
            http,
            webhook_arbiter,
        })
    }

    /// The pipeline's health: [`Health::failed`] resolves when a stage stopped while it ran.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Stop one stage as if it had died (for operators and tests): the pipeline is then marked failed.
    pub fn stop_stage(&self, stage: Stage) {
        match stage {
            Stage::Persister => self.persister.do_send(StopStage),
            Stage::Channel(ch) => self.channels[ch.index()].do_send(StopStage),
            Stage::Consumer => self.consumer_actor.do_send(StopStage),
        }
    }

    /// The scenario running now.
    pub fn scenario(&self) -> Arc<Scenario> {
        self.live.borrow().clone()
    }

    /// Lifecycles not finished, running or asleep.
    pub fn lifecycles_in_flight(&self) -> i64 {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Lifecycles asleep until shortly before their next step.
    pub fn lifecycles_asleep(&self) -> i64 {
        self.shared.asleep.load(Ordering::Relaxed)
    }

    /// Kafka partitions this instance owns now.
    pub fn owned_partitions(&self) -> usize {
        self.shared.assignments.owned().iter().filter(|(t, _)| t != crate::source::http::SOURCE_TOPIC).count()
    }

    /// Consumed messages not yet durable.
    pub fn uncommitted(&self) -> usize {
        self.tracker.pending()
    }

    /// Where the front doors listen, when they do.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(|s| s.addr)
    }

    /// The one shutdown path.
    pub async fn shutdown(mut self) {
        self.health.stopping();
        // The doors first: requests under way are answered once their messages are durable.
        if let Some(http) = self.http.take() {
            http.stop().await;
        }
        self.shutdown.cancel();
        if let Some(done) = self.consumer_done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
        }
        let deadline = Instant::now() + self.grace;
        while self.lifecycles_in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.lifecycles_in_flight();
        if left > 0 {
            tracing::info!(lifecycles = left, "unfinished lifecycles are stored and resume on the next start");
        }
        // From here on nothing new is emitted, so everything emitted can be stored before exit: stop the
        // channel arbiters and their lifecycles first (a lifecycle that passed its claim check just before
        // the revocation could otherwise emit after the flush below, its row arriving after the last write).
        self.shared.assignments.revoke_all();
        let channel_arbiters: Vec<Arbiter> = self.arbiters.drain(1..self.arbiters.len() - 1).collect();
        for a in &channel_arbiters {
            a.stop();
        }
        let _ = tokio::task::spawn_blocking(move || {
            for a in channel_arbiters {
                let _ = a.join();
            }
        })
        .await;
        // Webhook deliveries under way finish (or their vendor gives up), up to the grace period.
        if let Some(w) = &self.shared.webhooks {
            // Open batches (SendGrid) go now rather than after their wait.
            w.send_open_batches();
            let deadline = Instant::now() + self.grace.max(Duration::from_secs(5));
            while w.in_flight() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if w.in_flight() > 0 {
                tracing::info!(deliveries = w.in_flight(), "webhooks still under way are sent again on the next start");
            }
            if tokio::time::timeout(Duration::from_secs(10), w.flush_attempts()).await.is_err() {
                tracing::warn!("the store did not take the last webhook attempts within 10 s");
            }
        }
        let emitter = self.shared.emitter.clone();
        let _ = tokio::task::spawn_blocking(move || {
            emitter.flush(Duration::from_secs(30));
            emitter.close();
        })
        .await;
        // Let the forwarder hand the last deliveries over, then write them.
        let deadline = Instant::now() + Duration::from_secs(10);
        let unforwarded =
            |s: &LifecycleShared| s.emitter.unforwarded() + s.webhooks.as_ref().map_or(0, |w| w.unforwarded());
        while unforwarded(&self.shared) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // `Flush` answers once every row handed over is durable (the persister's contract).
        if tokio::time::timeout(Duration::from_secs(30), self.persister.send(Flush)).await.is_err() {
            tracing::error!("the store did not take the last rows within 30 s; their lifecycles resume on restart");
        }
        let (c, t) = (self.consumer.clone(), self.tracker.clone());
        let _ = tokio::task::spawn_blocking(move || {
            consumer::commit(&c, &t, CommitMode::Sync);
            // Leave the group now rather than after the session timeout.
            c.unsubscribe();
        })
        .await;
        for a in self.arbiters.drain(..) {
            a.stop();
        }
        if let Some(a) = self.webhook_arbiter.take() {
            a.stop();
        }
        tracing::info!("pipeline stopped");
    }
}
