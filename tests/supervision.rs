//! No silent stalls: a stage that stops while the pipeline runs fails it (`understudy run` then exits
//! non-zero for the orchestrator to restart it) instead of leaving a service that consumes with offsets
//! that never commit.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Kafka;
use understudy::actors::pipeline::{Pipeline, Stage};
use understudy::demo::{publish, sample_batch};
use understudy::model::Channel;
use understudy::store::Store;

async fn each_stage_that_stops_fails_the_pipeline(k: Kafka) {
    for (stage, name) in [
        (Stage::Persister, "the persister stage stopped"),
        (Stage::Channel(Channel::Sms), "the sms channel stage stopped"),
        (Stage::Consumer, "the consumer stage stopped"),
    ] {
        let (url, _dir) = common::sqlite_url();
        let settings = common::settings(k, &url, 2);
        let brokers = k.brokers();
        let store = Store::connect(&url, 1).await.unwrap();
        let pipeline =
            Pipeline::start(&settings, Arc::new(common::scenario("happy-path.yaml", 0.0001)), &brokers).await.unwrap();
        let batch = sample_batch(&common::suffix(), 200);
        publish(&brokers, &settings.kafka.input_topics[0], &batch, None).await.unwrap();
        common::all_finished(&store, 200, Duration::from_secs(60)).await;
        assert_eq!(pipeline.health().failure(), None, "healthy while every stage runs");

        pipeline.stop_stage(stage);
        let reason = tokio::time::timeout(Duration::from_secs(10), pipeline.health().failed())
            .await
            .unwrap_or_else(|_| panic!("{stage:?} stopped, and the pipeline did not notice within 10 s"));
        assert_eq!(reason, name);
        pipeline.shutdown().await;
    }
}

/// A clean shutdown is not a failure.
async fn a_shutdown_is_not_a_failure(k: Kafka) {
    let (url, _dir) = common::sqlite_url();
    let settings = common::settings(k, &url, 2);
    let _store = Store::connect(&url, 1).await.unwrap();
    let pipeline =
        Pipeline::start(&settings, Arc::new(common::scenario("happy-path.yaml", 0.0001)), &k.brokers()).await.unwrap();
    let health = pipeline.health().clone();
    pipeline.shutdown().await;
    assert_eq!(health.failure(), None);
}

crate::on_both_brokers!(actix::test, each_stage_that_stops_fails_the_pipeline, a_shutdown_is_not_a_failure);
