//! Topic administration. Brokers such as tansu do not auto-create topics, so Understudy creates the ones
//! it needs through the admin API.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::{KafkaError, Result};
use crate::config::KafkaSettings;

/// Create `topics` if they are missing. Existing topics are left as they are.
pub async fn ensure_topics(settings: &KafkaSettings, brokers: &str, topics: &[&str]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = super::client_config(settings, brokers).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, settings.partitions, TopicReplication::Fixed(settings.replication_factor)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::CreateTopic { topic, reason: code.to_string() });
            }
        }
    }
    Ok(())
}

/// The cluster's id (Metadata), within `timeout`. Blocking.
pub fn cluster_id<C: rdkafka::ClientContext>(client: &rdkafka::client::Client<C>, timeout: Duration) -> Result<String> {
    use rdkafka::bindings as rd;
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: the string librdkafka returns is ours to free, with `rd_kafka_mem_free`, once copied (rdkafka's
    // own `fetch_cluster_id` does not free it).
    unsafe {
        let rk = client.native_ptr();
        let id = rd::rd_kafka_clusterid(rk, ms);
        if id.is_null() {
            return Err(KafkaError::Describe(format!("no cluster id within {timeout:?}")));
        }
        let out = std::ffi::CStr::from_ptr(id).to_string_lossy().into_owned();
        rd::rd_kafka_mem_free(rk, id.cast());
        Ok(out)
    }
}

/// The incarnation key of each of `topics`: `{cluster}/{topic id}` (`cluster` from [`cluster_id`]), the
/// topic id in standard base64. A topic deleted and created again gets a new topic id; a broker started
/// afresh (the embedded one) a new cluster id. Topics the broker does not know are left out; a broker that
/// reports no topic id (all zeros) gives `{cluster}/`.
///
/// Blocking: describes the topics (DescribeTopics) within `timeout`. Works on any client; the consumer's
/// own is used so that no connection is added.
pub fn topic_keys<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    cluster: &str,
    topics: &[&str],
    timeout: Duration,
) -> Result<std::collections::HashMap<String, String>> {
    use std::ffi::{CStr, CString};

    use rdkafka::bindings as rd;

    let names: Vec<CString> = topics
        .iter()
        .map(|t| CString::new(*t).map_err(|_| KafkaError::Describe(format!("topic name `{t}` holds a NUL byte"))))
        .collect::<Result<_>>()?;
    let mut ptrs: Vec<*const std::ffi::c_char> = names.iter().map(|c| c.as_ptr()).collect();
    let mut out = std::collections::HashMap::new();
    // SAFETY: every object created here is destroyed here, after the last read of what it owns; the
    // strings read from the result are copied before the event that owns them is destroyed.
    unsafe {
        let rk = client.native_ptr();
        let collection = rd::rd_kafka_TopicCollection_of_topic_names(ptrs.as_mut_ptr(), ptrs.len());
        let options = rd::rd_kafka_AdminOptions_new(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS);
        let mut errstr = [0 as std::ffi::c_char; 256];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        rd::rd_kafka_AdminOptions_set_request_timeout(options, ms, errstr.as_mut_ptr(), errstr.len());
        let queue = rd::rd_kafka_queue_new(rk);
        rd::rd_kafka_DescribeTopics(rk, collection, options, queue);
        let event = rd::rd_kafka_queue_poll(queue, ms.saturating_add(1000));
        let result = if event.is_null() {
            Err(KafkaError::Describe(format!("no answer to DescribeTopics within {timeout:?}")))
        } else if rd::rd_kafka_event_error(event) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            let msg = CStr::from_ptr(rd::rd_kafka_event_error_string(event)).to_string_lossy().into_owned();
            Err(KafkaError::Describe(msg))
        } else {
            let res = rd::rd_kafka_event_DescribeTopics_result(event);
            let mut n = 0usize;
            let descs = if res.is_null() {
                std::ptr::null_mut()
            } else {
                rd::rd_kafka_DescribeTopics_result_topics(res, &mut n)
            };
            for i in 0..n {
                let d = *descs.add(i);
                let err = rd::rd_kafka_TopicDescription_error(d);
                if !err.is_null() && rd::rd_kafka_error_code(err) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                {
                    continue;
                }
                let name = CStr::from_ptr(rd::rd_kafka_TopicDescription_name(d)).to_string_lossy().into_owned();
                let id = rd::rd_kafka_TopicDescription_topic_id(d);
                let zero = id.is_null()
                    || (rd::rd_kafka_Uuid_most_significant_bits(id) == 0
                        && rd::rd_kafka_Uuid_least_significant_bits(id) == 0);
                let text = if zero { std::ptr::null() } else { rd::rd_kafka_Uuid_base64str(id) };
                let id =
                    if text.is_null() { String::new() } else { CStr::from_ptr(text).to_string_lossy().into_owned() };
                out.insert(name, format!("{cluster}/{id}"));
            }
            Ok(())
        };
        if !event.is_null() {
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_queue_destroy(queue);
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_TopicCollection_destroy(collection);
        result?;
    }
    Ok(out)
}

/// What `run` finds on the cluster before it starts anything.
#[derive(Debug, Clone)]
pub struct Preflight {
    pub brokers: usize,
    /// Each topic the service needs, with its partition count, or `None` when missing (`run` creates it
    /// when `kafka.create_topics` is on).
    pub topics: Vec<(String, Option<usize>)>,
}

/// A client context keeping why the client failed, for the reason of a failed preflight: the first
/// authentication failure, or else the first error, from librdkafka's log and error events (both queued:
/// they reach the context when the client is polled).
#[derive(Default)]
struct FailureReason(std::sync::Mutex<Option<String>>);

impl FailureReason {
    fn note(&self, message: &str, serious: bool) {
        let Ok(mut last) = self.0.lock() else { return };
        // An authentication failure is the reason, whatever came before; later errors (every broker
        // down) follow from it.
        if last.as_deref().is_some_and(|l| l.contains("uthentication")) {
            return;
        }
        if message.contains("uthentication") || (serious && last.is_none()) {
            *last = Some(message.to_owned());
        }
    }
}

impl rdkafka::ClientContext for FailureReason {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel::*;
        tracing::debug!(fac, message, "librdkafka during preflight");
        self.note(message, matches!(level, Emerg | Alert | Critical | Error));
    }

    /// Kept for the preflight's error, which says it once, instead of logged as it comes.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "librdkafka error during preflight");
        self.note(reason, true);
    }
}

impl rdkafka::consumer::ConsumerContext for FailureReason {}

/// Reach the cluster as `run` would and check that it can start there: Kafka answers within `timeout`,
/// the topics it needs exist (or `kafka.create_topics` is on), and `kafka.replication_factor` is not above
/// the number of brokers. Each failure names the setting to fix.
pub async fn preflight(settings: &KafkaSettings, brokers: &str, timeout: Duration) -> Result<Preflight> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let mut config = super::client_config(settings, brokers);
    // librdkafka logs at the level of the `log` crate's logger, which may be off: the reason of a failure
    // is in its warnings and errors.
    config.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    let metadata = tokio::task::spawn_blocking(move || {
        let client: BaseConsumer<FailureReason> =
            config.create_with_context(FailureReason::default()).map_err(|e| e.to_string())?;
        client.fetch_metadata(None, timeout).map_err(|e| {
            // The metadata call only says it failed; the client's log says why (a refused connection,
            // failed SASL authentication, a TLS handshake). Its events reach the context when polled.
            for _ in 0..5 {
                let _ = client.poll(Duration::from_millis(20));
            }
            match client.context().0.lock().ok().and_then(|e| e.clone()) {
                Some(why) => format!("{e}; {why}"),
                None => e.to_string(),
            }
        })
    })
    .await
    // The metadata call panicked or was cancelled: Kafka did not answer, as far as `run` can tell.
    .map_err(|e| KafkaError::Unreachable { brokers: brokers.to_owned(), timeout, reason: e.to_string() })?
    .map_err(|reason| KafkaError::Unreachable { brokers: brokers.to_owned(), timeout, reason })?;
    let topics: Vec<(String, Option<usize>)> = settings
        .service_topics()
        .iter()
        .map(|name| {
            let found = metadata.topics().iter().find(|t| t.name() == *name && t.error().is_none());
            (name.to_string(), found.map(|t| t.partitions().len()))
        })
        .collect();
    let n = metadata.brokers().len();
    let missing: Vec<String> = topics.iter().filter(|(_, p)| p.is_none()).map(|(t, _)| t.clone()).collect();
    if !missing.is_empty() && !settings.create_topics {
        return Err(KafkaError::MissingTopics { topics: missing.join(", ") });
    }
    if !missing.is_empty() && settings.replication_factor as usize > n {
        return Err(KafkaError::ReplicationFactor { replicas: settings.replication_factor, brokers: n });
    }
    Ok(Preflight { brokers: n, topics })
}
